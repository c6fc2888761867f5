"""The package layout's promises: one error hierarchy with CLI exit codes, window settings checked
before anything is created, the checkpoint as state_dict, named results, no import cycles."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import milnce
from milnce.cli import main
from milnce.errors import MilnceError, UsageError


@pytest.mark.parametrize("opts", [["--fps", "inf"], ["--fps", "nan"], ["--size", "100000"], ["--stride", "0"]])
def test_index_bad_window_option_fails_before_creating_anything(tmp_path, capsys, opts):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.mp4").write_bytes(b"x")
    ix = tmp_path / "ix"
    rc = main(["index", str(tmp_path / "v"), "--index", str(ix), "--no-download", *opts])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("milnce: error:") and len(err.strip().splitlines()) == 1
    assert not ix.exists()


def test_cli_reports_milnce_errors_in_one_line_and_bugs_with_a_traceback(monkeypatch, capsys):
    import milnce.commands.model as cmds

    def user_error(args):
        raise UsageError("bad option")

    monkeypatch.setattr(cmds, "cmd_info", user_error)
    assert main(["info"]) == 2
    assert capsys.readouterr().err == "milnce: error: bad option\n"

    def bug(args):
        raise ValueError("a bug")

    monkeypatch.setattr(cmds, "cmd_info", bug)
    with pytest.raises(ValueError, match="a bug"):
        main(["info"])


def test_error_hierarchy_keeps_builtin_bases():
    from milnce.index import IndexFolderError, IndexNotFoundError
    from milnce.video import VideoError, VideoNotFoundError

    for cls, base in [(milnce.CheckpointError, ValueError), (milnce.VocabularyError, ValueError),
                      (milnce.DownloadError, OSError), (VideoError, ValueError), (VideoNotFoundError, FileNotFoundError),
                      (IndexFolderError, ValueError), (IndexNotFoundError, FileNotFoundError), (UsageError, ValueError)]:
        assert issubclass(cls, MilnceError) and issubclass(cls, base), cls


def test_state_dict_is_the_checkpoint_and_features_are_named(model, checkpoint):
    from milnce.weights import load_checkpoint

    sd = model.state_dict()
    ref, _ = load_checkpoint(checkpoint[0])
    assert list(sd) == list(ref) and len(sd) == 537
    out = model.encode_video(torch.rand(1, 3, 8, 32, 32), features=True)
    emb, feats = out
    assert out.embedding is emb and out.features is feats and feats.shape == (1, 1024)


def test_convert_records_input_conventions(checkpoint, tmp_path):
    w, v = checkpoint
    assert main(["convert", str(tmp_path / "b"), "--weights", str(w), "--vocab", str(v), "--no-download"]) == 0
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["inputs"]["fps"] == 10.0 and config["inputs"]["num_frames"] == 32
    config["inputs"]["num_frames"] = 16
    (tmp_path / "b" / "config.json").write_text(json.dumps(config))
    m = milnce.load_model(tmp_path / "b", download=False)
    assert m.info.num_frames == 16
    assert milnce.WindowSettings.for_model(m).num_frames == 16


def test_window_settings_validate():
    w = milnce.WindowSettings()
    assert (w.fps, w.num_frames, w.size, w.stride) == (10.0, 32, 224, 16)
    assert milnce.WindowSettings.for_model(None) == w  # the registry and the defaults agree
    for bad in ({"fps": float("inf")}, {"fps": float("nan")}, {"size": 100000}, {"crop": "x"}):
        with pytest.raises(UsageError):
            w.with_(**bad)


def test_imports_without_cycles_or_fcntl():
    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def imp(name, *a, **k):\n"
        "    if name == 'fcntl': raise ImportError('no fcntl here')\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = imp\n"
        "import milnce.index as mi\n"
        "try:\n"
        "    mi.acquire_lock('.')\n"
        "except mi.IndexFolderError as e:\n"
        "    print('locking:', e)\n"
        "import milnce.video, milnce.api, milnce.commands.search, milnce.cli\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "locking: writing to the index" in r.stdout and r.stdout.strip().endswith("ok")


def test_commands_do_not_import_cli():
    from pathlib import Path

    import milnce.commands

    for f in Path(milnce.commands.__file__).parent.glob("*.py"):
        text = f.read_text()
        assert "from ..cli" not in text and "import milnce.cli" not in text and "from milnce.cli" not in text, f.name
