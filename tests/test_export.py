"""``milnce.export``: Export the video and text towers to ONNX for deployment (``pip install 'milnce[onnx]'``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import milnce
import milnce.atomic
import milnce.fast
from conftest import real_clip_batch
from milnce.errors import UsageError
from milnce.export import OPSET, check_targets, export_onnx, onnx_paths, verify_onnx

onnx = pytest.importorskip("onnx", reason="ONNX export needs onnx: pip install 'milnce[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="the parity test needs onnxruntime: pip install 'milnce[onnx]'")


FRAMES, SIZE = 8, 64


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    # ``model`` (conftest) runs the fast path; the export takes its exact eager network
    done = export_onnx(model, tmp_path_factory.mktemp("onnx") / "s3d.onnx", num_frames=FRAMES, size=SIZE)
    return model, done


def _rel(ours: np.ndarray, ref: torch.Tensor) -> float:
    r = ref.detach().numpy()
    return float(np.abs(ours - r).max() / np.abs(r).max())


def test_files_names_and_metadata(exported):
    model, done = exported
    assert (done.video, done.text, done.vocab) == onnx_paths(done.video.parent / "s3d")
    assert done.video.name == "s3d.video.onnx" and done.text.name == "s3d.text.onnx" and done.vocab.name == "s3d.vocab.npy"
    assert done.opset == OPSET == 17 and (done.num_frames, done.size) == (FRAMES, SIZE)
    video = onnx.load(str(done.video))
    assert [o.version for o in video.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    meta = {p.key: p.value for p in video.metadata_props}
    assert meta["milnce.tower"] == "video" and meta["milnce.num_frames"] == str(FRAMES) and meta["milnce.size"] == str(SIZE)
    assert meta["milnce.weights_id"] == model.weights_id
    assert milnce.Tokenizer.from_file(done.vocab).vocab.tolist() == model.tokenizer.vocab.tolist()
    assert not any(m.training for m in model.net.modules())  # the model is left in eval mode
    assert not list(done.video.parent.glob("*.tmp"))


def test_video_parity_and_dynamic_batch(exported):
    model, done = exported
    sess = ort.InferenceSession(str(done.video), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["video"]
    assert sess.get_inputs()[0].shape == ["batch", 3, FRAMES, SIZE, SIZE]
    assert [o.name for o in sess.get_outputs()] == ["video_embedding", "mixed_5c"]
    clips = real_clip_batch(FRAMES, SIZE)  # real video: the test model is calibrated on it
    for batch in (1, 3):
        x = clips[:batch]
        emb, feat = sess.run(None, {"video": x.numpy()})
        with torch.no_grad():
            ref = model.net(x)
        assert emb.shape == (batch, 512) and feat.shape == (batch, 1024)
        assert _rel(emb, ref["video_embedding"]) < 1e-4
        assert _rel(feat, ref["mixed_5c"]) < 1e-4


def test_text_parity_and_dynamic_batch(exported):
    model, done = exported
    sess = ort.InferenceSession(str(done.text), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape, i.type) for i in sess.get_inputs()] == [("text_ids", ["batch", 16], "tensor(int64)")]
    assert [o.name for o in sess.get_outputs()] == ["text_embedding"]
    tok = milnce.Tokenizer.from_file(done.vocab)
    for texts in (["cut tomato"], ["open the door", "a man is playing guitar", "pour water into a bowl"]):
        ids = tok(texts)
        (emb,) = sess.run(None, {"text_ids": ids.numpy()})
        assert emb.shape == (len(texts), 512)
        assert _rel(emb, model.encode_text(texts)) < 1e-4


def test_verify_onnx_reports_small_differences(exported):
    model, done = exported
    diffs = verify_onnx(model, done, video=real_clip_batch(FRAMES, SIZE)[:2])
    assert set(diffs) == {"video_embedding", "mixed_5c", "text_embedding"}
    assert all(d < 1e-4 for d in diffs.values())


def test_one_tower_and_bad_settings(checkpoint, tmp_path):
    net = milnce.load_model(*checkpoint, download=False, fast=False).net
    done = export_onnx(net, tmp_path / "t", text=True, video=False)  # a plain S3D works too
    assert done.video is None and done.text is not None and done.text.exists()
    assert not (tmp_path / "t.video.onnx").exists()
    with pytest.raises(ValueError, match="even"):
        export_onnx(net, tmp_path / "x", num_frames=7, size=SIZE, text=False)
    with pytest.raises(UsageError, match="nothing to export"):
        export_onnx(net, tmp_path / "x", video=False, text=False)
    with pytest.raises(UsageError, match="opset"):
        export_onnx(net, tmp_path / "x", opset=99)
    with pytest.raises(UsageError, match="MILNCE or milnce.S3D"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "x")
    assert not list(tmp_path.glob("x*"))


@pytest.mark.slow
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


# --------------------------------------------------------------------------- output files


def test_the_files_each_tower_writes(tmp_path):
    prefix = tmp_path / "s3d.onnx"
    assert [p.name for p in check_targets(prefix)] == ["s3d.video.onnx", "s3d.text.onnx", "s3d.vocab.npy"]
    assert [p.name for p in check_targets(prefix, text=False)] == ["s3d.video.onnx"]
    assert [p.name for p in check_targets(prefix, video=False)] == ["s3d.text.onnx", "s3d.vocab.npy"]


def test_existing_files_refused_unless_overwrite(tmp_path):
    (tmp_path / "s3d.vocab.npy").write_bytes(b"")
    check_targets(tmp_path / "s3d", text=False)  # only the video graph: the vocabulary is not written
    with pytest.raises(UsageError, match=r"s3d\.vocab\.npy already exist\(s\); pass --overwrite"):
        check_targets(tmp_path / "s3d", video=False)
    assert check_targets(tmp_path / "s3d", overwrite=True)[2].name == "s3d.vocab.npy"


def test_a_prefix_without_a_name_is_refused(tmp_path):
    with pytest.raises(UsageError, match="needs a file name prefix"):
        check_targets(str(tmp_path) + "/..")
