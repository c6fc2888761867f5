"""``milnce.weights``: Published weights."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import milnce
import milnce.api
import milnce.atomic
import milnce.fast
import milnce.integrity
import milnce.weights
from conftest import VOCAB, write_checkpoint
from milnce.cache import file_stamp
from milnce.download import cache_dir
from milnce.weights import CheckpointError, fingerprint, load_checkpoint, load_verified, save_bundle
from weights_fixtures import random_weights


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


def test_state_dict_is_the_checkpoint_and_features_are_named(model, checkpoint):

    sd = model.state_dict()
    ref, _ = load_checkpoint(checkpoint[0])
    assert list(sd) == list(ref) and len(sd) == 537
    out = model.encode_video(torch.rand(1, 3, 8, 32, 32), features=True)
    emb, feats = out
    assert out.embedding is emb and out.features is feats and feats.shape == (1, 1024)


def test_verdict_is_cached_by_size_and_mtime(checkpoint, tmp_path, monkeypatch):
    w = tmp_path / "w.pth"
    w.write_bytes(checkpoint[0].read_bytes())
    first = load_verified(w)
    assert not first.cached and (cache_dir() / milnce.integrity.VERIFIED_FILE).is_file()

    def boom(*a, **kw):
        raise AssertionError("re-verified an unchanged file")

    monkeypatch.setattr(milnce.integrity, "zip_problem", boom)
    monkeypatch.setattr(milnce.weights, "fingerprint", boom)
    second = load_verified(w)
    assert second.cached and second.fingerprint == first.fingerprint
    model = milnce.load_model(w, checkpoint[1], download=False)
    assert model.weights_id == first.fingerprint
    monkeypatch.undo()
    st = w.stat()
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: verified again
    assert not load_verified(w).cached


def test_bundle_with_changed_weights_is_refused(checkpoint, tmp_path):
    sd, _ = load_checkpoint(checkpoint[0])
    out = save_bundle(sd, np.asarray(VOCAB), tmp_path / "b")
    from safetensors.torch import save_file

    changed = {k: v.clone() for k, v in sd.items()}
    changed["fc.bias"][0] += 1.0
    save_file(changed, str(out / "model.safetensors"))
    with pytest.raises(CheckpointError, match="changed since the bundle was written"):
        milnce.load_model(out, download=False)


class _System:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch", "legacy", "raw"])
def test_pickled_code_is_named_as_such(tmp_path, writer, capsys):
    p = tmp_path / "evil.pth"
    if writer == "torch":
        torch.save({"net": _System()}, p)
    elif writer == "legacy":
        torch.save({"net": _System()}, p, _use_new_zipfile_serialization=False)
    else:
        with open(p, "wb") as f:
            pickle.dump({"net": _System()}, f)
    with pytest.raises(CheckpointError, match=r"contains pickled Python objects / code .*system.*refused "
                                              r"\(not a plain tensor checkpoint\)") as exc:
        load_checkpoint(p)
    assert "truncated" not in str(exc.value)
    assert capsys.readouterr().out == ""  # nothing ran


def test_garbage_is_still_truncated_or_corrupt(tmp_path):
    p = tmp_path / "junk.pth"
    p.write_bytes(b"not a checkpoint at all" * 100)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(p)


def test_published_checkpoint_loads_strict(checkpoint):
    sd, spec = load_checkpoint(checkpoint[0])
    assert spec.space_to_depth and spec.vocab_size == len(VOCAB) + 1 and spec.embed_dim == 512
    assert len(sd) == 537


def test_training_checkpoint_no_space_to_depth(tmp_path):
    w, v = write_checkpoint(tmp_path, space_to_depth=False, training=True)
    sd, spec = load_checkpoint(w)
    assert not spec.space_to_depth
    assert not any(k.startswith("module.") for k in sd)
    model = milnce.load_model(w, v, download=False)
    assert not model.space_to_depth
    emb = model.encode_video(torch.rand(1, 3, 7, 45, 51))  # odd sizes are fine without space-to-depth
    assert emb.shape == (1, 512)


def test_safetensors_and_bundle_roundtrip(checkpoint, model, tmp_path):
    sd, _ = load_checkpoint(checkpoint[0])
    out = save_bundle(sd, np.asarray(VOCAB), tmp_path / "bundle")
    assert json.loads((out / "config.json").read_text())["fingerprint"] == fingerprint(sd)
    a = model  # conftest: milnce.load_model(*checkpoint, download=False)
    b = milnce.load_model(out, download=False)  # folder: model.safetensors + vocab.npy
    c = milnce.load_model(out / "model.safetensors", download=False)
    assert a.weights_id == b.weights_id == c.weights_id
    x = torch.rand(1, 3, 8, 64, 64)
    torch.testing.assert_close(a.encode_video(x), b.encode_video(x))
    torch.testing.assert_close(a.encode_text(["open door"]), c.encode_text(["open door"]))


def _save(tmp_path: Path, obj, name="bad.pth") -> Path:
    p = tmp_path / name
    torch.save(obj, p)
    return p


class _Evil:
    def __reduce__(self):
        return (print, ("this would run code",))


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(b"not a checkpoint at all" * 100), "truncated or corrupt"),
        (lambda p: torch.save(torch.nn.Linear(3, 4).state_dict(), p), "not an S3D"),
        (lambda p: torch.save({"net": _Evil()}, p), r"contains pickled Python objects / code.*refused \(not a plain tensor"),
        (lambda p: torch.save([1, 2, 3], p), "expected a state dict"),
    ],
)
def test_bad_checkpoint_files(tmp_path, make, match):
    p = tmp_path / "bad.pth"
    make(p)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(p)


def test_truncated_checkpoint(checkpoint, tmp_path):
    data = checkpoint[0].read_bytes()
    p = tmp_path / "trunc.pth"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(p)


def test_checkpoint_key_and_shape_problems(tmp_path):
    sd = random_weights()
    missing = dict(sd)
    del missing["mixed_4c.conv_b0.conv1.weight"]
    with pytest.raises(CheckpointError, match="1 missing keys.*mixed_4c.conv_b0.conv1.weight"):
        load_checkpoint(_save(tmp_path, missing))
    extra = dict(sd, **{"head.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="unexpected keys.*head.weight"):
        load_checkpoint(_save(tmp_path, extra))
    wrong = dict(sd, **{"gating.fc.weight": torch.zeros(10, 10)})
    with pytest.raises(CheckpointError, match=r"wrong shapes.*gating.fc.weight: \(10, 10\)"):
        load_checkpoint(_save(tmp_path, wrong))
    nan = dict(sd, **{"fc.bias": torch.full((512,), float("nan"))})
    with pytest.raises(CheckpointError, match="NaN"):
        load_checkpoint(_save(tmp_path, nan))
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nope.pth")
