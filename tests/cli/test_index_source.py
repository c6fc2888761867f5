"""Indexes remember their model: search/serve/localize load the weights an index records when
--weights is not given; a moved or changed file is one line naming the record (issue 24 item 2)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

import milnce
from conftest import VOCAB, random_state_dict, write_checkpoint
from milnce.cli import main
from milnce.index import Index, build_index
from milnce.index.source import IndexModelError, recorded_weights
from video_fixtures import make_video

SMALL = {"fps": 10.0, "num_frames": 8, "size": 32, "stride": 4}


def _video(path: Path, **kw: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return make_video(path, **kw)


def _build(tmp_path: Path, weights: Path, vocab: Path | None) -> Path:
    video = _video(tmp_path / "v" / "a.mp4", n=20)
    model = milnce.load_model(weights, vocab, download=False)
    idx = tmp_path / "idx"
    build_index([video.parent], idx, model, workers=0, progress=False, **SMALL)
    return idx


def _search(idx: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    rc = main(["search", "--index", str(idx), "red square", "--json", "--no-download", *extra])
    out, err = capsys.readouterr()
    return rc, out, err


def test_search_loads_the_recorded_weights_file(tmp_path, capsys):
    weights, vocab = write_checkpoint(tmp_path / "w")
    idx = _build(tmp_path, weights, vocab)
    rec = recorded_weights(idx)
    assert rec is not None and rec.kind == "file"
    assert rec.weights == str(weights.resolve()) and rec.vocab == str(vocab.resolve())
    # no --weights, downloads off: before the record this failed (the published weights are not cached)
    rc, out, err = _search(idx, capsys)
    assert rc == 0, err
    assert json.loads(out.splitlines()[-1]) or out


def test_moved_weights_are_one_line_naming_the_record(tmp_path, capsys):
    weights, vocab = write_checkpoint(tmp_path / "w")
    idx = _build(tmp_path, weights, vocab)
    fp = Index.open(idx).weights_id
    shutil.move(str(weights), str(tmp_path / "elsewhere.pth"))
    rc, out, err = _search(idx, capsys)
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert str(weights.resolve()) in lines[0] and fp in lines[0] and "--weights" in lines[0]
    assert "no longer there" in lines[0]
    # --weights still works (the moved file: same fingerprint)
    rc, out, err = _search(idx, capsys, "--weights", str(tmp_path / "elsewhere.pth"), "--vocab", str(vocab))
    assert rc == 0, err


def test_changed_weights_are_refused_naming_the_record(tmp_path, capsys):
    weights, vocab = write_checkpoint(tmp_path / "w")
    idx = _build(tmp_path, weights, vocab)
    fp = Index.open(idx).weights_id
    torch.save(random_state_dict(seed=5), weights)  # same path, other weights
    rc, out, err = _search(idx, capsys)
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and fp in lines[0] and "changed since" in lines[0] and "--weights" in lines[0], err
    with pytest.raises(IndexModelError):
        rec = recorded_weights(idx)
        assert rec is not None
        rec.check(milnce.load_model(weights, vocab, download=False))


def test_old_index_without_record_uses_the_default_weights(tmp_path, capsys):
    weights, vocab = write_checkpoint(tmp_path / "w")
    idx = _build(tmp_path, weights, vocab)
    con = sqlite3.connect(idx / "index.sqlite")
    con.execute("DELETE FROM meta WHERE key='weights_source'")
    con.commit()
    con.close()
    assert recorded_weights(idx) is None
    rc, out, err = _search(idx, capsys)
    assert rc != 0 and "published weights are not in the cache" in err  # as before: the registry default


def test_run_folder_is_recorded_and_found_again(tmp_path, capsys):
    run = tmp_path / "runs" / "synthetic"
    (run / "checkpoints").mkdir(parents=True)
    torch.save(random_state_dict(), run / "checkpoints" / "step_00000002.pt")
    np.save(run / "vocab.npy", np.asarray(VOCAB, dtype=str), allow_pickle=False)
    (run / "config.json").write_text(json.dumps({"num_frames": 8, "fps": 4.0, "size": 32}))
    video = _video(tmp_path / "v" / "a.mp4", n=32, rate=4)  # 8 s
    model = milnce.load_model(run, download=False)
    assert model.weights_source == {"kind": "run", "weights": str(run.resolve()), "vocab": str((run / "vocab.npy").resolve())}
    idx = tmp_path / "idx"
    build_index([video.parent], idx, model, workers=0, progress=False)
    rec = recorded_weights(idx)
    assert rec is not None and rec.kind == "run" and "run folder" in rec.describe()
    rc, out, err = _search(idx, capsys)
    assert rc == 0, err
    shutil.rmtree(run)
    rc, out, err = _search(idx, capsys)
    assert rc == 2 and "run folder" in err and str(run.resolve()) in err


def test_registry_weights_are_recorded_by_name(checkpoint, monkeypatch):
    from milnce.api import _weights_source

    assert _weights_source(None, None, Path("/x"), None) == {"kind": "registry", "weights": "s3d_howto100m",
                                                             "vocab": None}
    monkeypatch.setenv("MILNCE_WEIGHTS", str(checkpoint[0]))
    assert _weights_source(None, None, checkpoint[0], checkpoint[1])["kind"] == "file"


def test_model_for_index_prefers_weights_then_record(tmp_path, model, checkpoint):
    """What search/serve/localize load (``commands.common.model_for_index``), without loading anything."""
    import argparse

    from milnce.commands.common import model_for_index
    from milnce.index import Index
    from milnce.windows import WindowSettings

    idx = tmp_path / "ix"
    with Index.create_for(idx, model.weights_id, WindowSettings()) as ix:
        ix._commit([], weights_source={"kind": "file", "weights": str(checkpoint[0]), "vocab": str(checkpoint[1])})
    seen: list[tuple[str | None, str | None]] = []

    def load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
        seen.append((args.weights, args.vocab))
        return model

    base = {"device": "cpu", "precision": "fp32", "eager": False, "no_download": True}
    assert model_for_index(argparse.Namespace(weights=None, vocab=None, **base), str(idx), load) is model
    assert seen[-1] == (str(checkpoint[0]), str(checkpoint[1]))
    model_for_index(argparse.Namespace(weights="other.pth", vocab=None, **base), str(idx), load)
    assert seen[-1] == ("other.pth", None)  # --weights wins
    model_for_index(argparse.Namespace(weights=None, vocab="mine.npy", **base), str(idx), load)
    assert seen[-1] == (str(checkpoint[0]), "mine.npy")  # --vocab wins over the recorded list
