"""``milnce.mirrors``: Where a registry entry's files can be had."""

from __future__ import annotations

import pytest

from milnce.download import cache_dir
from milnce.mirrors import MIRRORS_FILE, confirm_url, download_url, sources
from milnce.weights import REGISTRY
from weights_fixtures import ERROR_PAGE, mirror_info


def test_registry_lists_the_known_sources_in_order():
    urls = [s.weights_url for s in sources(REGISTRY["s3d_howto100m"])]
    assert urls == ["https://www.di.ens.fr/~miech/S3D_howto100m/s3d_howto100m.pth",
                    "https://drive.google.com/uc?export=download&id=1DN8t1feS0t5hYYTfXQfZd596Pu9yXJIr",
                    "https://www.rocq.inria.fr/cluster-willow/amiech/howto100m/s3d_howto100m.pth"]
    assert sources(REGISTRY["s3d_howto100m"])[1].vocab_url.endswith("id=1p_CMGppAQk3B0_Z0i1r2AN_D1FM3kUFW")


def test_env_then_file_then_registry(mirror_server, monkeypatch, tmp_path):
    monkeypatch.setenv("MILNCE_MIRRORS", f"{mirror_server.url('missing/a/')} ; {tmp_path / 'nowhere'}\n")
    (cache_dir() / MIRRORS_FILE).write_text(f"# my mirrors\n{mirror_server.url('missing/b/')}\n\n"
                                            f"{mirror_server.url('missing/w.pth')}  {mirror_server.url('missing/v.npy')}  # pair\n")
    info = mirror_info(mirror_server, mirrors=(mirror_server.url("missing/c/"),))
    found = sources(info)
    assert [s.origin for s in found][:2] == ["$MILNCE_MIRRORS"] * 2
    assert found[1].weights_url == (tmp_path / "nowhere" / "s3d_howto100m.pth").as_uri()  # a path: file: URL
    assert [s.weights_url.rsplit("/", 2)[-2] for s in found] == ["a", "nowhere", "b", "missing", "missing", "c"]
    assert found[3].vocab_url.endswith("/missing/v.npy") and found[3].origin.endswith(MIRRORS_FILE)
    assert found[4].origin == "registry" and found[5].origin == "registry mirror"


def test_drive_page_addresses_become_download_addresses():
    assert download_url("https://drive.google.com/file/d/AbC-1_x/view?usp=sharing") == \
        "https://drive.google.com/uc?export=download&id=AbC-1_x"
    assert download_url("https://drive.google.com/open?id=Q1") == "https://drive.google.com/uc?export=download&id=Q1"
    assert confirm_url(ERROR_PAGE, "https://x/") is None
    # a page cannot send the download to another scheme
    assert confirm_url('<a href="file:///etc/passwd?confirm=1">x</a>', "https://x/") is None


def test_mirror_list_bounded(tmp_path, monkeypatch):
    from milnce import mirrors
    from milnce.cache import cache_dir

    monkeypatch.delenv(mirrors.MIRRORS_ENV, raising=False)
    path = cache_dir() / mirrors.MIRRORS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# mine\nhttps://example.invalid/w  # note\n\n")
    assert [e for e, _ in mirrors.user_entries()] == ["https://example.invalid/w"]
    path.unlink()
    path.symlink_to("/dev/zero")
    with pytest.raises(mirrors.MirrorError, match="mirror list .*not a text file"):
        mirrors.user_entries()
    path.unlink()
    path.write_bytes(b"h" * (1 << 20))
    with pytest.raises(mirrors.MirrorError, match="line 1 is longer than"):
        mirrors.user_entries()
