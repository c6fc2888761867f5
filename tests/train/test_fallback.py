"""`milnce demo` without the published weights: one line says why, then the same demo runs on a small
model trained here on generated videos, cached so that the second run reuses it."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import replace

import pytest

import milnce
import milnce.weights
from milnce.cache import cache_dir
from milnce.cli import main
from milnce.train import fallback

TINY = {"videos": 8, "val_videos": 4, "steps": 2, "batch_size": 4, "warmup_steps": 1, "workers": 0}


@pytest.fixture
def no_weights_anywhere(monkeypatch):
    """Every weights source refuses connections: a 127.0.0.1 port bound but not listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    info = milnce.weights.REGISTRY["s3d_howto100m"]
    monkeypatch.setitem(milnce.weights.REGISTRY, "s3d_howto100m",
                        replace(info, url=dead + "a/s3d_howto100m.pth", vocab_url=dead + "a/s3d_dict.npy",
                                mirrors=(f"{dead}b/w.pth {dead}b/v.npy",)))
    monkeypatch.setenv("MILNCE_MIRRORS", dead + "env/")
    monkeypatch.setenv(fallback.RECIPE_ENV, json.dumps(TINY))
    yield dead
    sock.close()


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


def test_cache_key_follows_recipe_and_code_version(monkeypatch):
    base = fallback.recipe()
    assert fallback.recipe_key(base) == fallback.recipe_key(dict(base))
    assert fallback.recipe_key({**base, "steps": base["steps"] + 1}) != fallback.recipe_key(base)
    key = fallback.recipe_key(base)
    monkeypatch.setattr(milnce, "__version__", milnce.__version__ + ".post1")
    assert fallback.recipe_key(base) != key


def test_stale_fallback_is_rebuilt_and_removed(monkeypatch, tmp_path):
    calls = []

    def fake_build(tmp, settings, progress):
        calls.append(settings["steps"])
        (tmp / "run").mkdir(parents=True)
        return {"R@5": 50.0}

    monkeypatch.setattr(fallback, "_build", fake_build)
    old = fallback.fallback_model({**fallback.RECIPE, "steps": 1}, progress=False)
    assert old.built and fallback.fallback_model({**fallback.RECIPE, "steps": 1}, progress=False).built is False
    new = fallback.fallback_model({**fallback.RECIPE, "steps": 2}, progress=False)
    assert new.built and calls == [1, 2] and not old.root.exists() and new.root.is_dir()
    # a half-built folder (no fallback.json: an interrupted build) is not taken for a model
    (new.root / fallback.DONE_FILE).unlink()
    assert fallback.fallback_model({**fallback.RECIPE, "steps": 2}, progress=False).built


def test_recipe_env_must_name_known_settings(monkeypatch, capsys):
    monkeypatch.setenv(fallback.RECIPE_ENV, '{"stepz": 3}')
    with pytest.raises(milnce.UsageError, match="keys among"):
        fallback.recipe()


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


@pytest.mark.parametrize("installed", [True, False])
def test_serve_hint_only_when_the_extra_is_missing(installed, monkeypatch, capsys):
    """Item 8: the demo said "needs pip install 'milnce[serve]'" even with it installed."""
    import argparse
    import importlib.util

    import milnce.commands.demo as demo_cmd

    real = importlib.util.find_spec
    if installed and (real("fastapi") is None or real("uvicorn") is None):
        pytest.skip("the serve extra is not installed here")
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (real(name, *a) if installed else None) if name in ("fastapi", "uvicorn")
                        else real(name, *a))
    demo = demo_cmd._Demo(None, "m", "m", [], {}, ["a red square moves left"], {})
    demo_cmd._print_next(argparse.Namespace(weights=None, vocab=None), "/tmp/ix", demo)
    out = capsys.readouterr().out
    assert "milnce serve --index /tmp/ix, then open" in out or not installed
    assert ("needs pip install 'milnce[serve]'" in out) is (not installed)
    assert "milnce search --index /tmp/ix 'a red square moves left'" in out and "--weights" not in out
