"""``milnce export`` end to end (``milnce.commands.export``): the CLI run through ``main(argv)`` or a subprocess."""

from __future__ import annotations

import errno
import importlib.util

import pytest

import milnce
import milnce.atomic
import milnce.fast
from milnce.cli import main
from weights_fixtures import offline_args, one_line_error

onnx = pytest.importorskip("onnx", reason="ONNX export needs onnx: pip install 'milnce[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="the parity test needs onnxruntime: pip install 'milnce[onnx]'")


@pytest.mark.slow
def test_cli_export(checkpoint, tmp_path, capsys):
    w, v = checkpoint
    prefix = tmp_path / "out" / "s3d"
    assert main(["export", "--onnx", str(prefix), "--weights", str(w), "--vocab", str(v), "--no-download",
                 "--num-frames", "8", "--size", "32", "--check-outputs"]) == 0
    out = capsys.readouterr().out
    assert "s3d.video.onnx" in out and "s3d.text.onnx" in out and "opset 17" in out and "B x 3 x 8 x 32 x 32" in out
    assert out.count("onnxruntime vs PyTorch") == 3
    assert prefix.with_name("s3d.video.onnx").exists() and prefix.with_name("s3d.vocab.npy").exists()
    assert main(["export", "--onnx", "", "--weights", str(w), "--vocab", str(v), "--no-download"]) == 2
    assert "prefix" in capsys.readouterr().err


onnx_needed = pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")),
                                 reason="needs onnx and onnxruntime: pip install 'milnce[onnx]'")


@onnx_needed
def test_export_options_overwrite_and_read_only_out(checkpoint, tmp_path, capsys, monkeypatch):
    prefix = str(tmp_path / "s3d")
    base = ["export", "--onnx", prefix, *offline_args(checkpoint), "--size", "32", "--text-only"]
    assert main([*base, "--num-frames", "8", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main([*base, "--frames", "8"]) == 2  # the old spelling still parses (with a deprecation line)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "milnce: warning: --frames is deprecated in export, use --num-frames" and len(err) == 2
    assert err[1].startswith("milnce: error:") and "--overwrite" in err[1]
    assert main([*base, "--overwrite", "--device", "cuda:99"]) == 2
    one_line_error(capsys)

    def erofs(*a, **kw):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(milnce.atomic.os, "replace", erofs)
    assert main([*base, "--overwrite"]) == 2
    assert "Read-only file system" in one_line_error(capsys)


@pytest.mark.slow
@onnx_needed
def test_export_verify_prints_a_verdict(checkpoint, tmp_path, capsys):
    prefix = str(tmp_path / "s3d")
    assert main(["export", "--onnx", prefix, *offline_args(checkpoint), "--num-frames", "8", "--size", "32",
                 "--check-outputs"]) == 0
    out = capsys.readouterr().out
    assert out.count("against float64") == 3 and "verification passed" in out
