"""The foundations (issue 16: cache layer, atomic writes, the error contract; issue 15's holes in
the model commands): every failure a user can cause is a one-line ``MilnceError``, every file
written is complete or absent, every verdict is re-checked after an edit."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import milnce
import milnce.atomic
import milnce.fast
from conftest import VOCAB, random_state_dict
from milnce.atomic import atomic_file, atomic_write_text
from milnce.cache import JsonStore, file_stamp
from milnce.cli import main
from milnce.errors import MilnceError, MissingFileError, OutputError, TrainingError, UsageError
from milnce.weights import CheckpointError, load_verified

ROOT = Path(__file__).resolve().parents[1]


def _args(ckpt) -> list[str]:
    return ["--weights", str(ckpt[0]), "--vocab", str(ckpt[1]), "--no-download"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("milnce: error:") and len(err.strip().splitlines()) == 1, err
    return err


# --------------------------------------------------------------------------- error contract


def test_error_classes_keep_builtin_bases():
    for cls, base in [(MissingFileError, FileNotFoundError), (OutputError, OSError), (TrainingError, RuntimeError)]:
        assert issubclass(cls, MilnceError) and issubclass(cls, base)
    e = OutputError("/x/y", OSError(errno.EROFS, "Read-only file system"))
    assert e.errno == errno.EROFS and str(e) == "cannot write /x/y: Read-only file system"


def test_missing_weights_or_vocab_is_a_milnce_error(tmp_path, checkpoint):
    with pytest.raises(MissingFileError, match="weights file not found"):
        milnce.load_model(tmp_path / "nope.pth", checkpoint[1], download=False)
    with pytest.raises(MissingFileError, match="vocabulary file not found"):
        milnce.load_model(checkpoint[0], tmp_path / "nope.npy", download=False)
    with pytest.raises(MissingFileError, match="not in the cache"):
        milnce.load_model(download=False)


def test_cli_leaves_plain_os_errors_as_bugs(monkeypatch, capsys):
    import milnce.commands.model as cmds

    def bug(args):
        raise FileNotFoundError("a bug, not a user error")

    monkeypatch.setattr(cmds, "cmd_info", bug)
    with pytest.raises(FileNotFoundError):
        main(["info"])


@pytest.mark.parametrize("device", ["cuda", "cuda:99", "meta", "cpu;rm", "tpu"])
def test_bad_device_is_one_line(checkpoint, capsys, device):
    if device.startswith("cuda") and torch.cuda.is_available() and device != "cuda:99":
        pytest.skip("this machine has CUDA")
    assert main(["embed-text", "open door", *_args(checkpoint), "--device", device]) == 2
    assert repr(device) in _one_line_error(capsys)


def test_pth_with_complex_or_int64_tensors_is_refused(tmp_path, capsys):
    for dtype in (torch.complex64, torch.int64):
        sd = random_state_dict()
        sd["fc.weight"] = sd["fc.weight"].to(dtype)
        path = tmp_path / f"{dtype}.pth"
        torch.save(sd, path)
        with pytest.raises(CheckpointError, match="not real floating-point.*fc.weight"):
            load_verified(path)
        np.save(tmp_path / "v.npy", np.asarray(VOCAB, dtype=str))
        assert main(["embed-text", "x", "--weights", str(path), "--vocab", str(tmp_path / "v.npy"),
                     "--no-download"]) == 2
        assert "fc.weight" in _one_line_error(capsys)


def test_broken_pipe_is_quiet(tmp_path):
    """``milnce info | head -n 0``: the reader is gone before milnce writes; no traceback."""
    env = {**os.environ, "MILNCE_HOME": str(tmp_path), "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "milnce", "info"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `head` exiting: every write of milnce now fails with EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert err == "", err


def test_warnings_become_milnce_lines(checkpoint, capsys):
    assert main(["embed-text", "qwertyuiop", *_args(checkpoint)]) == 0
    err = capsys.readouterr().err
    assert "no word in the vocabulary" in err
    assert all(line.startswith("milnce: ") for line in err.strip().splitlines()), err
    assert ".py:" not in err  # no source file, no code line


# --------------------------------------------------------------------------- fused cuDNN fallback


class _FakeCuda(torch.Tensor):
    """A CPU tensor that says it is on CUDA, to reach the cuDNN branch of ``_ConvReLU``."""

    @property
    def is_cuda(self) -> bool:  # type: ignore[override]
        return True


def _unit() -> milnce.fast._ConvReLU:
    unit = milnce.fast._ConvReLU(torch.randn(4, 3, 1, 1, 1), torch.zeros(4), (1, 1, 1), (0, 0, 0))
    unit.cudnn_fused = True
    return unit


@pytest.mark.parametrize("error, falls_back", [
    (RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED"), True),
    (NotImplementedError("cudnn_convolution_relu: no kernel for this input"), True),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),
    (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), False),
    (torch.cuda.OutOfMemoryError("CUDA out of memory"), False),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), False),
])
def test_fused_cudnn_falls_back_only_when_unsupported(monkeypatch, error, falls_back):
    monkeypatch.setattr(milnce.fast, "_HAS_MKLDNN_POINTWISE", False)

    def fused(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch, "cudnn_convolution_relu", fused)
    unit = _unit()
    x = torch.rand(1, 3, 2, 4, 4).as_subclass(_FakeCuda)
    if falls_back:
        out = unit(x)
        ref = torch.nn.functional.conv3d(x.as_subclass(torch.Tensor), unit.weight, unit.bias).relu()
        torch.testing.assert_close(out.as_subclass(torch.Tensor), ref)
        assert unit.cudnn_fused is False
    else:
        with pytest.raises(type(error)):
            unit(x)
        assert unit.cudnn_fused is True  # the fast path stays on: the next batch may fit


# --------------------------------------------------------------------------- atomic writes, cache


def test_atomic_prefix_and_output_error(tmp_path, monkeypatch):
    target = tmp_path / "a.bin"
    seen = []
    real_open = open

    def spy(path, mode="r", *a, **kw):
        seen.append(os.path.basename(path))
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr("builtins.open", spy)
    with atomic_file(target, prefix=".a.bin.host.") as f:
        f.write(b"x")
    monkeypatch.undo()
    assert target.read_bytes() == b"x"
    assert seen[0].startswith(f".a.bin.host.{os.getpid()}.") and seen[0].endswith(".tmp")

    def erofs(*a, **kw):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(milnce.atomic.os, "replace", erofs)
    with pytest.raises(OutputError, match="cannot write .*b.txt: Read-only file system") as info:
        atomic_write_text(tmp_path / "b.txt", "y")
    assert info.value.errno == errno.EROFS
    assert os.listdir(tmp_path) == ["a.bin"]  # no temporary file left


def test_json_store_is_lenient_and_bounded(tmp_path):
    store = JsonStore(tmp_path / "s.json", max_entries=2)
    assert store.read() == {}
    (tmp_path / "s.json").write_text("[not an object")
    assert store.read() == {}
    for k in "abc":
        store.put(k, {"v": k})
    assert list(store.read()) == ["b", "c"]


def test_in_place_edit_with_mtime_restored_is_verified_again(checkpoint, tmp_path):
    w = tmp_path / "w.pth"
    w.write_bytes(checkpoint[0].read_bytes())
    assert not load_verified(w).cached
    assert load_verified(w).cached
    st = w.stat()
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the tensor data: only the CRC check can see it
    with open(w, "r+b") as f:  # in place: same inode, same size
        f.write(bytes(data))
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back
    assert (w.stat().st_size, w.stat().st_mtime_ns, w.stat().st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    assert file_stamp(w.stat()) != file_stamp(st)  # the ctime moved
    with pytest.raises(CheckpointError, match="corrupt"):
        load_verified(w)


# --------------------------------------------------------------------------- vocabulary, convert, export


def test_own_vocabulary_beats_milnce_vocab(checkpoint, tmp_path, monkeypatch):
    assert main(["convert", str(tmp_path / "b"), *_args(checkpoint)]) == 0
    other = tmp_path / "other.npy"
    np.save(other, np.asarray(VOCAB[:10], dtype=str))  # a word list of another size
    monkeypatch.setenv("MILNCE_VOCAB", str(other))
    assert milnce.load_model(tmp_path / "b", download=False).tokenizer.vocab_size == len(VOCAB) + 1
    assert milnce.load_model(tmp_path / "b" / "model.safetensors", download=False).tokenizer.vocab_size == len(VOCAB) + 1
    # a folder without its own vocab.npy never takes its parent's
    monkeypatch.delenv("MILNCE_VOCAB")
    parent = tmp_path / "parent"
    (parent / "run").mkdir(parents=True)
    np.save(parent / "vocab.npy", np.asarray(VOCAB, dtype=str))
    (parent / "run" / "model.safetensors").write_bytes((tmp_path / "b" / "model.safetensors").read_bytes())
    with pytest.raises(MissingFileError, match="no vocabulary found"):
        milnce.api.resolve_files(parent / "run", download=False)


def test_convert_writes_files_with_the_umask(checkpoint, tmp_path):
    old = os.umask(0o022)
    try:
        assert main(["convert", str(tmp_path / "b"), *_args(checkpoint), "--device", "cpu"]) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "b").iterdir()}
    assert modes == {"model.safetensors": 0o644, "vocab.npy": 0o644, "config.json": 0o644}


onnx_needed = pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")),
                                 reason="needs onnx and onnxruntime: pip install 'milnce[onnx]'")


@onnx_needed
def test_export_options_overwrite_and_read_only_out(checkpoint, tmp_path, capsys, monkeypatch):
    prefix = str(tmp_path / "s3d")
    base = ["export", "--onnx", prefix, *_args(checkpoint), "--size", "32", "--text-only"]
    assert main([*base, "--num-frames", "8", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main([*base, "--frames", "8"]) == 2  # the old spelling still parses (with a deprecation line)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "milnce: warning: --frames is deprecated in export, use --num-frames" and len(err) == 2
    assert err[1].startswith("milnce: error:") and "--overwrite" in err[1]
    assert main([*base, "--overwrite", "--device", "cuda:99"]) == 2
    _one_line_error(capsys)

    def erofs(*a, **kw):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(milnce.atomic.os, "replace", erofs)
    assert main([*base, "--overwrite"]) == 2
    assert "Read-only file system" in _one_line_error(capsys)


@onnx_needed
def test_export_verify_prints_a_verdict(checkpoint, tmp_path, capsys):
    prefix = str(tmp_path / "s3d")
    assert main(["export", "--onnx", prefix, *_args(checkpoint), "--num-frames", "8", "--size", "32",
                 "--check-outputs"]) == 0
    out = capsys.readouterr().out
    assert out.count("against float64") == 3 and "verification passed" in out


def test_onnx_check_judges_against_float64(model, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from milnce.export import check_onnx, export_onnx

    done = export_onnx(model, tmp_path / "s", num_frames=8, size=32, text=False)
    checks = check_onnx(model, done)
    assert set(checks) == {"video_embedding", "mixed_5c"} and all(c.ok for c in checks.values())
    # a graph that computes something else fails
    import onnxruntime

    real = onnxruntime.InferenceSession

    class Off(real):  # type: ignore[misc, valid-type]
        def run(self, names, feeds):
            return [o * 1.01 for o in super().run(names, feeds)]

    monkeypatch.setattr(onnxruntime, "InferenceSession", Off)
    assert not any(c.ok for c in check_onnx(model, done).values())


def test_json_outputs_stay_json(tmp_path):
    store = JsonStore(tmp_path / "c.json")
    store.put("k", {"a": 1})
    assert json.loads((tmp_path / "c.json").read_text()) == {"k": {"a": 1}}
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_usage_error_is_still_a_value_error():
    assert issubclass(UsageError, ValueError)


# --------------------------------------------------------------------------- other CPUs


@pytest.mark.slow
@pytest.mark.parametrize("threads, isa", [(1, None), (2, "AVX2")])  # 2 threads, default ISA: the suite itself
def test_numeric_tolerances_hold_on_other_cpus(threads, isa):
    """The float32 comparisons again with another thread count and without AVX-512 (oneDNN picks
    other kernels and summation orders: stand-ins for other CPUs). One test, in a subprocess."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": str(ROOT / "src")}
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                        "tests/test_weights_api.py::test_encode_api"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


def test_other_broken_pipes_stay_bugs(monkeypatch):
    import milnce.commands.model as cmds

    def bug(args):
        raise BrokenPipeError("a worker's pipe")

    monkeypatch.setattr(cmds, "cmd_info", bug)
    monkeypatch.setattr("milnce.cli._stdout_closed", lambda: False)
    with pytest.raises(BrokenPipeError):
        main(["info"])
