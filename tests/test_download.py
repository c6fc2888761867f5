"""``milnce.download``: Downloads into the cache."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

import numpy as np
import pytest

import milnce
import milnce.api
import milnce.download
import milnce.integrity
import milnce.weights
from conftest import VOCAB
from milnce.download import (
    CHECKSUMS_FILE,
    DownloadError,
    _record_checksum,
    _stat_entry,
    cache_dir,
    download,
    ensure_weights,
)
from milnce.weights import WeightsInfo
from weights_fixtures import PAYLOAD, FlakyServer, mirror_info, weights_info


def test_download_good(weights_server, tmp_path):
    dest = download(weights_server.url("good", "data.bin"), tmp_path / "out.bin", expected_size=len(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "out.bin.part").exists()
    assert weights_server.hits == [("/good/data.bin", None)]


def test_truncated_transfer_is_resumed(weights_server, tmp_path):
    weights_server.truncations_left = 2
    dest = download(weights_server.url("trunc", "data.bin"), tmp_path / "out.bin", retries=3, backoff=0.01, progress=False)
    assert dest.read_bytes() == PAYLOAD
    ranges = [r for _, r in weights_server.hits]
    assert ranges[0] is None and len(ranges) == 3
    assert ranges[1] == f"bytes={len(PAYLOAD) // 2}-"  # each retry resumes where the last stopped
    assert ranges[2] == f"bytes={len(PAYLOAD) // 2 + (len(PAYLOAD) - len(PAYLOAD) // 2) // 2}-"


def test_truncated_transfer_gives_up_after_retries_keeps_part(weights_server, tmp_path):
    weights_server.truncations_left = 10
    with pytest.raises(DownloadError, match="after 2 attempts.*closed after"):
        download(weights_server.url("trunc", "data.bin"), tmp_path / "out.bin", retries=1, backoff=0.01, progress=False)
    assert not (tmp_path / "out.bin").exists()
    assert 0 < (tmp_path / "out.bin.part").stat().st_size < len(PAYLOAD)


def test_404_is_not_retried_and_explains(weights_server, tmp_path):
    with pytest.raises(DownloadError) as err:
        download(weights_server.url("missing", "data.bin"), tmp_path / "out.bin", retries=3, backoff=5, progress=False)
    msg = str(err.value)
    assert "not found at URL http://127.0.0.1" in msg and "404" in msg
    assert "mirror" in msg and "--weights/--vocab" in msg and "MILNCE_WEIGHTS/MILNCE_VOCAB" in msg
    assert len(weights_server.hits) == 1
    assert not (tmp_path / "out.bin").exists()


def test_stalled_server_times_out(weights_server, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match="timed out"):
        download(weights_server.url("stall", "data.bin"), tmp_path / "out.bin", timeout=0.3, retries=1, backoff=0.01,
                 progress=False)
    assert time.monotonic() - t0 < 3
    assert len(weights_server.hits) == 2
    assert not (tmp_path / "out.bin").exists()


def test_connection_refused_is_retried(tmp_path):
    srv = FlakyServer()  # bound but never serving, then closed: nothing listens on the port
    url = srv.url("good", "data.bin")
    srv.server_close()
    with pytest.raises(DownloadError, match="after 3 attempts.*cannot connect"):
        download(url, tmp_path / "out.bin", retries=2, backoff=0.01, timeout=1, progress=False)


def test_resume_from_existing_part(weights_server, tmp_path):
    (tmp_path / "out.bin.part").write_bytes(PAYLOAD[:1000])
    dest = download(weights_server.url("good", "data.bin"), tmp_path / "out.bin", expected_size=len(PAYLOAD), progress=True)
    assert dest.read_bytes() == PAYLOAD
    assert weights_server.hits == [("/good/data.bin", "bytes=1000-")]


def test_server_ignoring_range_restarts_from_zero(weights_server, tmp_path):
    (tmp_path / "out.bin.part").write_bytes(b"x" * 1000)  # would corrupt the file if appended to
    dest = download(weights_server.url("norange", "data.bin"), tmp_path / "out.bin", progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert weights_server.hits == [("/norange/data.bin", "bytes=1000-")]


def test_complete_part_gets_416_and_is_kept(weights_server, tmp_path):
    (tmp_path / "out.bin.part").write_bytes(PAYLOAD)
    dest = download(weights_server.url("good", "data.bin"), tmp_path / "out.bin", expected_size=len(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert weights_server.hits == [("/good/data.bin", f"bytes={len(PAYLOAD)}-")]


def test_size_mismatch_is_rejected(weights_server, tmp_path):
    with pytest.raises(DownloadError, match="offers 102,400 bytes.*but 5,000 were expected"):
        download(weights_server.url("good", "data.bin"), tmp_path / "out.bin", expected_size=5000, progress=False)
    assert not (tmp_path / "out.bin").exists()


def test_file_url_source(tmp_path):
    (tmp_path / "src.bin").write_bytes(PAYLOAD)
    (tmp_path / "out.bin.part").write_bytes(b"x" * 10)  # file: URLs ignore Range; restarted
    dest = download((tmp_path / "src.bin").as_uri(), tmp_path / "out.bin", expected_size=len(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD


# ----------------------------------------------------------------------------- ensure_weights()


def test_ensure_weights_downloads_once_and_records_sha256(weights_server, monkeypatch):
    info = weights_info(weights_server)
    w, v = ensure_weights(info, progress=False)
    assert w == cache_dir() / "s3d_howto100m.pth" and v == cache_dir() / "s3d_dict.npy"
    assert w.read_bytes() == weights_server.files["s3d_howto100m.pth"]
    sums = json.loads((cache_dir() / CHECKSUMS_FILE).read_text())
    assert sums["s3d_howto100m.pth"]["sha256"] == milnce.weights.sha256_file(w)
    assert sums["s3d_dict.npy"]["sha256"] == milnce.weights.sha256_file(v)
    assert sums["s3d_howto100m.pth"]["url"] == info.url
    assert len(weights_server.hits) == 2

    hashed = []
    real = milnce.weights.sha256_file
    monkeypatch.setattr(milnce.download, "sha256_file", lambda p: hashed.append(p) or real(p))
    assert ensure_weights(info, progress=False) == (w, v)
    assert len(weights_server.hits) == 2  # nothing downloaded
    assert hashed == []  # unchanged size and mtime: no re-hashing
    os.utime(w)  # touched but identical: hashed once, then trusted again
    ensure_weights(info, progress=False)
    ensure_weights(info, progress=False)
    assert hashed == [w]


def test_corrupted_cache_file_is_detected(weights_server, skip_weights_check):
    info = weights_info(weights_server)
    w, _ = ensure_weights(info, progress=False)
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0xFF
    st = w.stat()
    w.write_bytes(bytes(data))
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(DownloadError, match="changed since it was downloaded.*delete it and run `milnce download`"):
        ensure_weights(info, progress=False)
    assert w.exists()  # the user decides
    assert len(weights_server.hits) == 2


def test_unrecorded_bad_file_in_cache_is_replaced(weights_server, skip_weights_check, caplog):
    info = weights_info(weights_server)
    (cache_dir() / "s3d_howto100m.pth").write_bytes(b"junk")
    with caplog.at_level("WARNING", logger="milnce"):
        w, _ = ensure_weights(info, progress=False)
    assert w.read_bytes() == weights_server.files["s3d_howto100m.pth"]
    assert "downloading it again" in caplog.text  # logged (the CLI prints milnce.* warnings to stderr)


def test_weights_of_another_model_are_rejected_and_removed(weights_server):
    # right size, but the word embedding has 301 rows while this "model" claims 299 words
    info = weights_info(weights_server, vocab_words=len(VOCAB) - 1)
    with pytest.raises(DownloadError, match="another model"):
        ensure_weights(info, progress=False)
    assert not (cache_dir() / "s3d_howto100m.pth").exists()
    assert CHECKSUMS_FILE not in os.listdir(cache_dir())


def test_not_a_checkpoint_is_rejected_and_removed(weights_server):
    junk = b"\0" * len(weights_server.files["s3d_howto100m.pth"])
    weights_server.files["junk.pth"] = junk
    info = weights_info(weights_server, url=weights_server.url("good", "junk.pth"))
    with pytest.raises(DownloadError, match="not a usable test_model checkpoint"):
        ensure_weights(info, progress=False)
    assert not (cache_dir() / "s3d_howto100m.pth").exists()


def test_wrong_vocab_length_is_rejected_and_removed(weights_server, tmp_path):
    np.save(tmp_path / "v.npy", np.asarray(VOCAB[:-1], dtype=str), allow_pickle=False)
    weights_server.files["s3d_dict.npy"] = (tmp_path / "v.npy").read_bytes()
    info = weights_info(weights_server)
    with pytest.raises(DownloadError, match="has 299 words but test_model uses 300"):
        ensure_weights(info, progress=False)
    assert not (cache_dir() / "s3d_dict.npy").exists()
    assert (cache_dir() / "s3d_howto100m.pth").exists()  # the weights were fine


def test_mirror_is_used_when_primary_is_gone(weights_server, skip_weights_check):
    info = weights_info(weights_server, "missing", mirrors=(weights_server.url("missing"), weights_server.url("good")))
    w, v = ensure_weights(info, progress=False)
    assert v.read_bytes() == weights_server.files["s3d_dict.npy"]
    # the mirror that repeats the primary URL is tried once
    assert [p for p, _ in weights_server.hits][:2] == ["/missing/s3d_howto100m.pth", "/good/s3d_howto100m.pth"]


def test_all_sources_failing_lists_them(weights_server):
    info = weights_info(weights_server, "missing", mirrors=(weights_server.url("missing", "mirror/"),))
    with pytest.raises(DownloadError, match="any of 2 sources.*not found at URL"):
        ensure_weights(info, progress=False)


def test_two_threads_share_one_download(weights_server, skip_weights_check):
    info = weights_info(weights_server)
    results, errors = [], []

    def run() -> None:
        try:
            results.append(ensure_weights(info, progress=False))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(results) == 2
    assert weights_server.count("s3d_howto100m.pth") == 1 and weights_server.count("s3d_dict.npy") == 1


# ----------------------------------------------------------------------------- issue 10


def test_user_file_is_moved_aside_never_deleted(weights_server, capsys):
    import milnce.cli

    milnce.cli._setup_logging()  # milnce.* messages on stderr, as in the CLI (not only after a CLI test ran)
    mine = b"my own copy of the weights, hand-copied" * 10
    (cache_dir() / "s3d_howto100m.pth").write_bytes(mine)
    info = weights_info(weights_server, "missing")  # the download that follows fails
    with pytest.raises(DownloadError, match="your earlier file is kept as .*s3d_howto100m.pth.rejected"):
        ensure_weights(info, progress=False)
    err = capsys.readouterr().err
    assert "moved it to" in err and "never deletes" in err
    assert (cache_dir() / "s3d_howto100m.pth.rejected").read_bytes() == mine
    assert not (cache_dir() / "s3d_howto100m.pth").exists()
    # a second hand-copied file does not overwrite the first one moved aside
    (cache_dir() / "s3d_howto100m.pth").write_bytes(b"another" * 10)
    w, _ = ensure_weights(weights_info(weights_server), progress=False)
    assert w.read_bytes() == weights_server.files["s3d_howto100m.pth"]
    assert (cache_dir() / "s3d_howto100m.pth.rejected").read_bytes() == mine
    assert (cache_dir() / "s3d_howto100m.pth.rejected-2").read_bytes() == b"another" * 10


def test_retries_exhausted_message_has_the_same_hint(tmp_path):
    with pytest.raises(DownloadError) as exc:
        download("http://127.0.0.1:9/x.bin", tmp_path / "x.bin", retries=0, timeout=1, progress=False)
    assert "pass --weights" not in str(exc.value) and "MILNCE_WEIGHTS" in str(exc.value)


# ----------------------------------------------------------------------------- mirrors and Drive pages


def test_sources_tried_in_order_and_the_serving_one_is_logged(mirror_server, monkeypatch, skip_weights_check, caplog):
    monkeypatch.setenv("MILNCE_MIRRORS", mirror_server.url("missing/env/"))
    info = mirror_info(mirror_server, mirrors=(mirror_server.url("missing/reg/"), mirror_server.url("files/")))
    with caplog.at_level(logging.INFO, logger="milnce"):
        w, v = ensure_weights(info, progress=False, retries=0)
    assert w.read_bytes() == mirror_server.files["s3d_howto100m.pth"]
    assert mirror_server.hits[:4] == ["/missing/env/s3d_howto100m.pth", "/missing/s3d_howto100m.pth",
                                      "/missing/reg/s3d_howto100m.pth", "/files/s3d_howto100m.pth"]
    assert f"s3d_howto100m.pth: downloaded from {mirror_server.url('files/s3d_howto100m.pth')} (sha256 " in caplog.text
    record = json.loads((cache_dir() / CHECKSUMS_FILE).read_text())["s3d_howto100m.pth"]
    assert record["url"] == mirror_server.url("files/s3d_howto100m.pth") and len(record["sha256"]) == 64


@pytest.mark.parametrize("style", ["form", "link"])
def test_drive_confirmation_page_is_followed(mirror_server, style):
    mirror_server.drive_style = style
    pair = f"{mirror_server.url('uc?export=download&id=WEIGHTSID')} {mirror_server.url('uc?export=download&id=VOCABID')}"
    w, v = ensure_weights(mirror_info(mirror_server, mirrors=(pair,)), progress=False, retries=0)  # weights checked for real
    assert w.read_bytes() == mirror_server.files["s3d_howto100m.pth"] and v.read_bytes() == mirror_server.files["s3d_dict.npy"]
    if style == "form":
        assert any(h.startswith("/download?id=WEIGHTSID&export=download&confirm=t&uuid=u-WEIGHTSID") for h in mirror_server.hits)


def test_drive_error_page_fails_over_to_the_next_source(mirror_server, skip_weights_check):
    mirror_server.drive_style = "error"
    pair = f"{mirror_server.url('uc?id=WEIGHTSID')} {mirror_server.url('uc?id=VOCABID')}"
    info = mirror_info(mirror_server, mirrors=(pair, mirror_server.url("files/")))
    w, _ = ensure_weights(info, progress=False, retries=0)
    assert w.read_bytes() == mirror_server.files["s3d_howto100m.pth"]
    with pytest.raises(DownloadError, match="answered a web page instead of the file"):
        info = mirror_info(mirror_server, url=mirror_server.url("uc?id=WEIGHTSID"), filename="other.pth")
        ensure_weights(info, progress=False)


def test_offline_load_checks_the_recorded_sha256(checkpoint):
    home = cache_dir()
    w, v = home / "s3d_howto100m.pth", home / "s3d_dict.npy"
    w.write_bytes(checkpoint[0].read_bytes())
    v.write_bytes(checkpoint[1].read_bytes())
    from milnce.weights import sha256_file

    for p in (w, v):
        _record_checksum(home, p.name, _stat_entry(p, sha256_file(p), "https://example.invalid/" + p.name))
    assert milnce.load_model(download=False).encode_text(["open door"]).shape == (1, 512)
    words = np.asarray(VOCAB, dtype=str)[::-1]  # a valid word list of the right size, but not the recorded one
    np.save(v, words, allow_pickle=False)
    with pytest.raises(DownloadError, match="changed since it was downloaded"):
        milnce.load_model(download=False)
    assert json.loads((home / CHECKSUMS_FILE).read_text())["s3d_dict.npy"]["url"]


# ----------------------------------------------------------------------------- messages

ADVICE = "the original host has gone down at times; list a mirror in MILNCE_MIRRORS"
LOCAL = "or use local files: list a mirror in MILNCE_MIRRORS"


@pytest.fixture
def refused():
    """A 127.0.0.1 address whose port is bound but not listening: connections are refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    sock.close()


def _unreachable_info(url: str, mirrors: tuple[str, ...] = ()) -> WeightsInfo:
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
        ensure_weights(_unreachable_info(refused), progress=False, retries=0)
    msg = str(err.value)
    assert msg.startswith(f"downloading {refused}s3d_howto100m.pth failed after 1 attempt")
    assert msg.count("run again to resume") == 1 and msg.count(LOCAL) == 1 and "any of" not in msg


def test_several_sources_list_each_reason_and_advise_once(tmp_path, refused):
    folder = (tmp_path / "nowhere").as_uri() + "/"
    with pytest.raises(DownloadError) as err:
        ensure_weights(_unreachable_info(refused, mirrors=(folder,)), progress=False, retries=0)
    msg = str(err.value)
    assert msg.startswith("could not get s3d_howto100m.pth from any of 2 sources: "
                          f"downloading {refused}s3d_howto100m.pth failed after 1 attempt: cannot connect")
    assert f"; not found at URL {folder}s3d_howto100m.pth; {ADVICE}" in msg
    assert msg.count("list a mirror in MILNCE_MIRRORS") == 1 and "run again to resume" not in msg
    assert err.value.advice.startswith(ADVICE) and msg == f"{err.value.reason}; {err.value.advice}"
