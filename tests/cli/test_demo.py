"""``milnce demo`` end to end (``milnce.commands.demo``): the CLI run through ``main(argv)`` or a subprocess."""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

import milnce
import milnce.atomic
import milnce.weights
from index_fixtures import SMALL_ARGS, unreachable_weights
from milnce.cache import cache_dir
from milnce.cli import main
from milnce.train import fallback
from video_fixtures import make_video

SERVE_INSTALLED = importlib.util.find_spec("fastapi") is not None and importlib.util.find_spec("httpx") is not None
needs_serve = pytest.mark.skipif(not SERVE_INSTALLED, reason="the serve extra (fastapi, httpx) is not installed")

TINY = {"videos": 8, "val_videos": 4, "steps": 2, "batch_size": 4, "warmup_steps": 1, "workers": 0}


@pytest.fixture
def no_weights_anywhere(monkeypatch):
    """Every weights source refuses connections: a 127.0.0.1 port bound but not listening."""
    with unreachable_weights(monkeypatch, mirror=True) as dead:
        monkeypatch.setenv("MILNCE_MIRRORS", dead + "env/")
        monkeypatch.setenv(fallback.RECIPE_ENV, json.dumps(TINY))
        yield dead


@pytest.mark.slow
def test_offline_demo_trains_the_fallback_once(no_weights_anywhere, capsys):
    t0 = time.monotonic()
    assert main(["demo", "--quiet"]) == 0
    first = time.monotonic() - t0
    out, err = capsys.readouterr()
    why = [line for line in err.splitlines() if "published weights are not available" in line]
    assert len(why) == 1  # one line: which URLs, why, what to do
    assert f"{no_weights_anywhere}env/s3d_howto100m.pth" in why[0] and "MILNCE_MIRRORS" in why[0]
    assert "download --from" in why[0] and "small model trained here" in why[0]
    assert "model: the fallback model: a small S3D trained on generated videos" in out
    assert "trained here in" in out
    queries = [line for line in out.splitlines() if line.startswith("'") and line.endswith("':")]
    assert len(queries) == 3 and all(" moves " in q for q in queries)  # held-out captions: words it knows
    assert out.count("-> best match (fallback model): val0000") == 3
    assert "All 8 held-out captions (fallback model): the video it describes comes first for" in out
    assert "Search it yourself:  milnce search " in out and "--weights" not in out
    root = fallback.fallback_root(fallback.recipe())
    assert (root / fallback.DONE_FILE).is_file() and (root / "run" / "checkpoints").is_dir()
    assert not list((root / "data" / "videos").glob("train*"))  # only the held-out videos are kept
    assert not list(root.parent.glob(".*.tmp"))  # built in a temporary folder, renamed when complete

    t0 = time.monotonic()
    assert main(["demo", "--quiet"]) == 0
    second = time.monotonic() - t0
    out2, err2 = capsys.readouterr()
    assert "milnce train" not in err2 and "step 0" not in err2  # no training the second time
    assert f"cached in {root}" in out2 and "0 added" in out2
    assert second < first


@pytest.mark.slow
def test_published_weights_without_the_gifs_index_generated_videos(checkpoint, monkeypatch, capsys):
    """Published weights, but the GIFs cannot be downloaded: one line, then the generated held-out
    videos (no training) with their captions as queries."""
    import milnce.download as dl
    from conftest import VOCAB

    wpath, vpath = checkpoint
    info = milnce.weights.REGISTRY["s3d_howto100m"]
    monkeypatch.setitem(milnce.weights.REGISTRY, "s3d_howto100m", replace(
        info, url=wpath.as_uri(), vocab_url=vpath.as_uri(), num_bytes=wpath.stat().st_size,
        vocab_num_bytes=vpath.stat().st_size, vocab_words=len(VOCAB), mirrors=()))
    real = dl.download

    def gifs_unreachable(url, dest, *a, **kw):
        if "wikimedia" in url:
            raise dl.DownloadError(f"cannot connect to {url}")
        return real(url, dest, *a, **kw)

    monkeypatch.setattr(dl, "download", gifs_unreachable)
    monkeypatch.setenv(fallback.RECIPE_ENV, json.dumps(TINY))
    assert main(["demo", "--quiet", "--size", "32", "--num-frames", "8", "--fps", "4"]) == 0
    out, err = capsys.readouterr()
    assert sum("could not download the demo video" in line for line in err.splitlines()) == 1
    assert "s3d_howto100m.pth: downloaded from file:" in err  # which source served the weights
    assert "model: s3d_howto100m, the published weights" in out
    assert out.count("-> best match (s3d_howto100m): val0000") == 3
    assert not (cache_dir() / "fallback").exists()  # nothing trained


@pytest.mark.usefixtures("reuse_model")
def test_demo_lists_unreadable_videos_and_exits_1(tmp_path, wargs, capsys):
    """Issue 15: ``demo`` exited 0 with unreadable videos and listed none (``index`` lists them, exit 1)."""

    vids = tmp_path / "v"
    vids.mkdir()
    make_video(vids / "ok.mp4", n=8, rate=10, width=32, height=32)
    (vids / "broken.mp4").write_bytes(b"not a video")
    rc = main(["demo", "--videos", str(vids), "--index", str(tmp_path / "ix"), "--quiet", "--fps", "10",
               "--num-frames", "8", "--size", "32", "--stride", "4", *wargs])
    err = capsys.readouterr().err
    assert rc == 1 and "failed:" in err and "broken.mp4" in err and "Traceback" not in err


@pytest.mark.usefixtures("reuse_model")
def test_demo_offline_with_local_videos(tmp_path, video_dir, wargs, capsys):
    ix = tmp_path / "demo_ix"
    rc = main(["demo", "--videos", str(video_dir / "sub"), "--index", str(ix), "--quiet", *SMALL_ARGS, *wargs])
    assert rc == 0
    out = capsys.readouterr().out
    for q in ("waterfall", "playing guitar", "car drifting"):
        assert f"'{q}':" in out
    assert "blue.mp4" in out


@pytest.mark.usefixtures("reuse_model")
def test_demo_without_network_says_what_to_pass(monkeypatch, capsys):
    import milnce.download as dl

    err = getattr(dl, "DownloadError", None)
    if err is None:
        err = type("DownloadError", (OSError,), {})
        monkeypatch.setattr(dl, "DownloadError", err, raising=False)

    def no_network(url, dest, *a, **kw):
        raise err(f"cannot reach {url}: network is unreachable")

    monkeypatch.setattr(dl, "download", no_network, raising=False)
    rc = main(["demo", "--quiet", "--no-fallback"])  # without it: the small fallback model (test_demo_fallback.py)
    assert rc == 2
    msg = capsys.readouterr().err
    assert "could not download" in msg and "--weights" in msg and "--videos" in msg


@pytest.fixture(scope="module")
def browse_videos(tmp_path_factory) -> Path:
    """Two small painted videos (the second with a marker)."""
    vids = tmp_path_factory.mktemp("trust") / "videos"
    vids.mkdir()
    make_video(vids / "a.mp4", n=40, width=96, height=64)
    make_video(vids / "b.mp4", n=40, width=96, height=64, marker=True)
    return vids


@needs_serve
def test_demo_says_how_to_browse_its_index(browse_videos, checkpoint, tmp_path, capsys):

    ix = tmp_path / "demo ix"
    weights, vocab = checkpoint
    rc = main(["demo", "--videos", str(browse_videos), "--index", str(ix), "--quiet", "--num-frames", "8",
               "--size", "32", "--stride", "8", "--weights", str(weights), "--vocab", str(vocab)])
    assert rc == 0
    out = capsys.readouterr().out
    assert f"milnce serve --index '{ix}' --weights {weights} --vocab {vocab}" in out
    assert f"milnce search --index '{ix}'" in out
