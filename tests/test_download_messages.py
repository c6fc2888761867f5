"""The failure message of a weights download is built once: one source's reason with its advice,
or, over several sources, each source's reason and the advice once (nothing stripped again)."""

from __future__ import annotations

import socket

import pytest

from milnce.download import DownloadError, download, ensure_weights
from milnce.weights import WeightsInfo

ADVICE = "the original host has gone down at times; list a mirror in MILNCE_MIRRORS"
LOCAL = "or use local files: list a mirror in MILNCE_MIRRORS"


@pytest.fixture
def refused():
    """A 127.0.0.1 address whose port is bound but not listening: connections are refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    sock.close()


def _info(url: str, mirrors: tuple[str, ...] = ()) -> WeightsInfo:
    return WeightsInfo(name="test_model", url=url + "s3d_howto100m.pth", vocab_url=url + "s3d_dict.npy",
                       filename="s3d_howto100m.pth", vocab_filename="s3d_dict.npy", num_bytes=10,
                       vocab_num_bytes=10, vocab_words=3, mirrors=mirrors)


def test_one_url_reason_and_advice(tmp_path, refused):
    with pytest.raises(DownloadError) as err:
        download(refused + "w.pth", tmp_path / "w.pth", retries=0, timeout=2, progress=False)
    e = err.value
    assert e.reason.startswith(f"downloading {refused}w.pth failed after 1 attempt: cannot connect")
    assert e.advice.startswith("run again to resume (0 bytes kept), " + LOCAL)
    assert str(e) == f"{e.reason}; {e.advice}"
    missing = (tmp_path / "nowhere" / "w.pth").as_uri()
    with pytest.raises(DownloadError) as err:
        download(missing, tmp_path / "w2.pth", progress=False)
    assert err.value.reason == f"not found at URL {missing}" and err.value.advice.startswith(ADVICE)


def test_a_single_source_keeps_its_own_advice(refused):
    with pytest.raises(DownloadError) as err:
        ensure_weights(_info(refused), progress=False, retries=0)
    msg = str(err.value)
    assert msg.startswith(f"downloading {refused}s3d_howto100m.pth failed after 1 attempt")
    assert msg.count("run again to resume") == 1 and msg.count(LOCAL) == 1 and "any of" not in msg


def test_several_sources_list_each_reason_and_advise_once(tmp_path, refused):
    folder = (tmp_path / "nowhere").as_uri() + "/"
    with pytest.raises(DownloadError) as err:
        ensure_weights(_info(refused, mirrors=(folder,)), progress=False, retries=0)
    msg = str(err.value)
    assert msg.startswith("could not get s3d_howto100m.pth from any of 2 sources: "
                          f"downloading {refused}s3d_howto100m.pth failed after 1 attempt: cannot connect")
    assert f"; not found at URL {folder}s3d_howto100m.pth; {ADVICE}" in msg
    assert msg.count("list a mirror in MILNCE_MIRRORS") == 1 and "run again to resume" not in msg
    assert err.value.advice.startswith(ADVICE) and msg == f"{err.value.reason}; {err.value.advice}"
