"""One typed object per concern, resolved once (issue 26 item 1): a ``WindowSettings`` travels as
one object from ``build_index`` to the pipeline and the index; ``RunOptions`` (batch size, workers,
decoder threads, device) is resolved by one function, command line > config > environment >
default; ``TrainConfig``, ``EvalSettings`` and ``Recipe`` expose ``.window``; old files still load."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from milnce.errors import UsageError
from milnce.eval.protocol import EvalSettings
from milnce.index import Index, IndexMismatchError, build_index, index_window, stored_window
from milnce.recipes import RECIPES
from milnce.runoptions import RunOptions, default_workers, resolve_run_options
from milnce.windows import DEFAULT_BATCH_CPU, DEFAULT_BATCH_CUDA, WindowSettings
from video_fixtures import make_video

SRC = Path(__file__).resolve().parents[1] / "src" / "milnce"
SMALL = WindowSettings(fps=10.0, num_frames=8, size=32, stride=8)


def video(path: Path, **kw: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return make_video(path, **kw)


def fake_model(wid: str = "synthetic") -> SimpleNamespace:
    return SimpleNamespace(weights_id=wid, info=None)


# -- the window object, through the index path ------------------------------------------------


def test_build_index_hands_its_window_object_to_the_pipeline_and_stores_it(tmp_path, model, monkeypatch):
    import milnce.index.build as build

    video(tmp_path / "v" / "a.mp4", n=20, width=48, height=32)
    window = WindowSettings.for_model(model, num_frames=8, size=32, stride=8)
    seen: list[WindowSettings] = []
    real = build.run_jobs

    def spy(m, jobs, settings, **kw):  # type: ignore[no-untyped-def]
        seen.append(settings)
        return real(m, jobs, settings, **kw)

    monkeypatch.setattr(build, "run_jobs", spy)
    rep = build_index([tmp_path / "v"], tmp_path / "ix", model, window=window, run=RunOptions(workers=0),
                      progress=False)
    assert rep.windows_added > 0 and not rep.failed
    assert len(seen) == 1 and seen[0] is window  # the very object, not a copy rebuilt from the stored dict
    monkeypatch.undo()
    with Index.open(tmp_path / "ix") as ix:
        assert ix.settings == window.to_dict()  # the stored format: the same dict as before
        assert WindowSettings.from_dict(ix.settings) == window
    assert stored_window(tmp_path / "ix") == window


def test_build_index_run_defaults_follow_the_model_device(tmp_path, monkeypatch):
    import milnce.index.build as build

    class Stop(Exception):
        pass

    seen: list[RunOptions] = []

    def spy(m, jobs, settings, **kw):  # type: ignore[no-untyped-def]
        seen.append(kw["options"])
        raise Stop

    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.mp4").write_bytes(b"x")
    monkeypatch.setattr(build, "run_jobs", spy)
    on_cuda = SimpleNamespace(weights_id="w", info=None, device=torch.device("cuda"))
    with pytest.raises(Stop):
        build_index([tmp_path / "v"], tmp_path / "ix", on_cuda, window=SMALL, progress=False)  # type: ignore[arg-type]
    assert seen[0].batch_size == DEFAULT_BATCH_CUDA and seen[0].workers == default_workers()


def test_index_window_resolves_options_against_an_existing_index(tmp_path, model):
    d = tmp_path / "ix"
    assert stored_window(d) is None
    assert index_window(d, model) == WindowSettings.for_model(model)  # a new index: the model's windows
    assert index_window(d, model, stride=8).stride == 8
    with pytest.raises(UsageError, match="longer than the window"):
        index_window(d, model, num_frames=8, stride=16)
    assert index_window(d, model, num_frames=8, stride=16, allow_gaps=True).stride == 16
    Index.create(d, model, SMALL).close()
    # an existing index keeps its own windows; the options given must agree with them, those left out are its own
    assert index_window(d, model) == SMALL
    assert index_window(d, model, fps=10, stride=None) == SMALL
    with pytest.raises(IndexMismatchError, match=r"window settings: stride=16 \(index: 8\)"):
        index_window(d, model, stride=16)


def test_index_create_takes_a_window_object_and_checks_an_existing_index(tmp_path):
    d = tmp_path / "ix"
    with pytest.raises(UsageError, match="must be a WindowSettings"):
        Index.create(d, fake_model(), {"fps": 10.0})  # type: ignore[arg-type]
    Index.create(d, fake_model(), SMALL).close()
    Index.create(d, fake_model()).close()  # no window: the index's own
    Index.create(d, fake_model(), WindowSettings(fps=10.0, num_frames=8, size=32, stride=8)).close()  # equal: fine
    with pytest.raises(IndexMismatchError, match="other window settings"):
        Index.create(d, fake_model(), SMALL.with_(size=64))


def test_create_for_refuses_other_windows_for_an_existing_index(tmp_path):
    # index_features into an existing index went through create_for, which did not compare the
    # windows: features cut with other windows were mixed into the index
    d = tmp_path / "ix"
    Index.create_for(d, "w1", SMALL).close()
    with pytest.raises(IndexMismatchError, match=r"stride=4 \(index: 8\)"):
        Index.create_for(d, "w1", SMALL.with_(stride=4))
    with pytest.raises(IndexMismatchError, match="decoder=ffmpeg"):
        Index.create_for(d, "w1", SMALL.with_(decoder="ffmpeg"))
    with Index.create_for(d, "w1", SMALL, keep_existing=True) as ix:
        assert ix.settings == SMALL.to_dict()


def test_an_index_written_before_still_loads(tmp_path, model):
    # an index whose stored settings predate the crop and decoder keys (the stored format is unchanged)
    d = tmp_path / "ix"
    Index.create(d, model, SMALL).close()
    con = sqlite3.connect(d / "index.sqlite")
    con.execute("UPDATE meta SET value = ? WHERE key = 'settings'",
                (json.dumps({"fps": 10.0, "num_frames": 8, "size": 32, "stride": 8}),))
    con.commit()
    con.close()
    assert stored_window(d) == SMALL
    video(tmp_path / "v" / "a.mp4", n=12, width=48, height=32)
    rep = build_index([tmp_path / "v"], d, model, run=RunOptions(workers=0), progress=False)  # its own windows
    assert rep.windows_added > 0 and not rep.failed
    with Index.open(d) as ix:
        assert WindowSettings.from_dict(ix.settings) == SMALL


# -- RunOptions: resolved once --------------------------------------------------------------


def test_run_options_order_cli_config_environment_default():
    env = {"LOCAL_WORLD_SIZE": "2"}
    assert resolve_run_options().batch_size == DEFAULT_BATCH_CPU
    assert resolve_run_options(device="cuda").batch_size == DEFAULT_BATCH_CUDA  # a model already on CUDA
    assert resolve_run_options({"device": "cuda"}).batch_size == DEFAULT_BATCH_CUDA
    assert resolve_run_options(None, {"batch_size": 5}).batch_size == 5
    assert resolve_run_options({"batch_size": 3}, {"batch_size": 5}).batch_size == 3
    assert resolve_run_options({"batch_size": None}, {"batch_size": 5}).batch_size == 5  # None: not given
    assert resolve_run_options().workers == default_workers()
    assert resolve_run_options(env=env).workers == default_workers(env)
    assert resolve_run_options(None, {"workers": 2}, env).workers == 2
    assert resolve_run_options({"workers": 0}, {"workers": 2}, env).workers == 0
    assert resolve_run_options({"decode_threads": 3}).threads == 3
    assert resolve_run_options({"workers": 0}).threads == 0 and resolve_run_options({"workers": 1}).threads == 1
    assert resolve_run_options(None, {"device": "cpu"}, {"LOCAL_RANK": "1"}).device == "cpu"
    with pytest.raises(UsageError, match="batch size must be a whole number"):
        resolve_run_options({"batch_size": 0})
    with pytest.raises(UsageError, match="workers must be a whole number"):
        resolve_run_options(None, {"workers": -1})
    with pytest.raises(UsageError, match="unknown run option"):
        resolve_run_options({"batch": 4})
    with pytest.raises(UsageError, match="batch size"):
        RunOptions(batch_size=10**6)


def test_default_workers_share_the_cores_between_local_ranks():
    one = default_workers()
    assert default_workers({"LOCAL_WORLD_SIZE": "1"}) == one
    assert default_workers({"LOCAL_WORLD_SIZE": "64"}) == 1
    assert default_workers({"LOCAL_WORLD_SIZE": "x"}) == one


def test_run_options_torchrun_device(monkeypatch):
    # no CUDA: a plain cuda is one line (as today); train's default is the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match="CUDA is not available"):
        resolve_run_options({"device": "cuda"}, env={"LOCAL_RANK": "1"}, check=True)
    assert resolve_run_options(env={"LOCAL_RANK": "1"}, default_device="auto").device == "cpu"
    assert resolve_run_options(env={"LOCAL_RANK": "1"}, check=True).device == "cpu"  # commands' default
    # CUDA: LOCAL_RANK picks this process's GPU for a plain cuda (and train's default)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_run_options({"device": "cuda"}, env={"LOCAL_RANK": "1"}, check=True).device == "cuda:1"
    assert resolve_run_options(env={"LOCAL_RANK": "1"}, default_device="auto").device == "cuda:1"
    assert resolve_run_options({"device": "cuda:0"}, env={"LOCAL_RANK": "1"}, check=True).device == "cuda:0"
    assert resolve_run_options({"device": "cuda"}, env={}, check=True).device == "cuda"
    with pytest.raises(UsageError, match="2 GPU"):
        resolve_run_options({"device": "cuda"}, env={"LOCAL_RANK": "5"}, check=True)


def test_train_device_goes_through_the_resolver(monkeypatch):
    from milnce.train.dist import init_distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed(None).device == torch.device("cpu")
    with pytest.raises(UsageError, match="CUDA is not available"):
        init_distributed("cuda")


def test_run_jobs_takes_options_or_loose_values_not_both(tmp_path, model):
    from milnce.extract import run_jobs

    clip = video(tmp_path / "a.mp4", n=12, width=48, height=32)
    with pytest.raises(UsageError, match="not both"):
        next(iter(run_jobs(model, [clip], SMALL, options=RunOptions(workers=0), workers=0)))
    (a,) = run_jobs(model, [clip], SMALL, options=RunOptions(batch_size=2, workers=0), features=False)
    (b,) = run_jobs(model, [clip], SMALL, batch_size=2, workers=0, features=False)
    np.testing.assert_array_equal(a.starts, b.starts)
    np.testing.assert_allclose(a.embeddings, b.embeddings, rtol=1e-5, atol=1e-5)


def test_the_batch_default_is_stated_once():
    import argparse

    from milnce.commands.common import add_batch_option

    p = argparse.ArgumentParser()
    add_batch_option(p)
    text = p.format_help()
    assert f"{DEFAULT_BATCH_CPU} on the CPU" in " ".join(text.split()) and str(DEFAULT_BATCH_CUDA) in text
    drift = re.compile(r"(?:default[^\n]{0,40}?\b\d+\b\s*(?:on the )?CPU|\b\d+ on the CPU)", re.IGNORECASE)
    found = [f"{p.relative_to(SRC)}: {m.group(0)}" for p in SRC.rglob("*.py") for m in drift.finditer(p.read_text())]
    assert not found, found  # help texts and docstrings name the constant, never a number


# -- .window of the settings objects ------------------------------------------------------------


def test_settings_objects_expose_one_window():
    from milnce.train.config import TrainConfig

    cfg = TrainConfig(data="d", fps=5.0, num_frames=8, size=32)
    assert isinstance(cfg.window, WindowSettings) and cfg.window is cfg.window
    assert (cfg.window.fps, cfg.window.num_frames, cfg.window.size) == (5.0, 8, 32)
    ev = EvalSettings(num_frames=8, size=32, fps=10.0)
    assert ev.window is ev.window and ev.window.decoder == "ffmpeg" and ev.window.crop == "square"
    rec = RECIPES["videoclip"]
    assert rec.window is rec.window and (rec.window.fps, rec.window.num_frames, rec.window.stride) == (30.0, 30, 30)


def test_an_old_train_config_still_loads(tmp_path):
    from milnce.train.config import TrainConfig, load_config_file

    old = {"data": "d", "fps": 10, "num_frames": 16, "size": 112, "batch_size": 8, "workers": 2, "device": None}
    (tmp_path / "config.json").write_text(json.dumps(old))
    cfg = TrainConfig.from_dict(load_config_file(tmp_path / "config.json"))
    assert cfg.window == WindowSettings(fps=10.0, num_frames=16, size=112)
    saved = cfg.to_dict()
    assert "window" not in saved and saved["fps"] == 10.0 and saved["num_frames"] == 16  # the saved format
    assert TrainConfig.from_dict(saved) == cfg
