"""``milnce.scoring`` called directly: text embeddings saved as a file, saved video windows loaded
with their labels, and sentences scored against them."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from milnce.errors import UsageError
from milnce.scoring import Windows, embed_texts, load_windows, save_embeddings, score_texts
from milnce.video import EmbeddingsFileError, VideoWindows


class FakeModel:
    """Embeds a text as its length in every one of ``dim`` dimensions."""

    def __init__(self, dim: int = 4) -> None:
        self.dim = dim

    def encode_text(self, texts):  # type: ignore[no-untyped-def]
        return torch.tensor([[float(len(t))] * self.dim for t in texts], dtype=torch.float64)


def test_save_embeddings_names(tmp_path):
    a = np.ones((2, 4), np.float32)
    folder = tmp_path / "d"
    folder.mkdir()
    assert save_embeddings(str(folder), a) == str(folder / "text_embeddings.npy")
    assert save_embeddings(str(tmp_path / "e"), a) == str(tmp_path / "e.npy")
    assert save_embeddings(str(tmp_path / "f.npy"), a) == str(tmp_path / "f.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy"), a)
    assert not list(tmp_path.glob("*.tmp"))


def test_embed_texts_float32_and_one_warning_for_empty_text(caplog):
    with caplog.at_level(logging.WARNING, logger="milnce.scoring"):
        e = embed_texts(FakeModel(), ["ab", " "])
    assert e.dtype == np.float32 and e.shape == (2, 4)
    assert [r.getMessage() for r in caplog.records] == ["warning: empty text gets the all-padding embedding"]


def test_load_windows_labels_and_empty_files(tmp_path):
    f = tmp_path / "v.npz"
    VideoWindows("v.mp4", np.array([0.0, 0.4]), np.array([0.8, 1.2]), np.ones((2, 4), np.float32)).save(f)
    np.save(tmp_path / "p.npy", np.zeros((3, 4), np.float32))
    w = load_windows([str(f), str(tmp_path / "p.npy")])
    assert w.embeddings.shape == (5, 4)
    assert w.labels == ["v.npz[0.0-0.8s]", "v.npz[0.4-1.2s]", "p.npy[0]", "p.npy[1]", "p.npy[2]"]
    empty = tmp_path / "z.npz"
    VideoWindows("z.mp4", np.zeros(0), np.zeros(0), np.zeros((0, 4), np.float32)).save(empty)
    with pytest.raises(EmbeddingsFileError, match="holds no windows"):
        load_windows([str(f), str(empty)])


def test_score_texts_and_a_dimension_mismatch():
    w = Windows(np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 1.0]]), ["a", "b"])
    np.testing.assert_allclose(score_texts(FakeModel(), ["x", "xyz"], w), [[1, 2], [3, 6]])
    with pytest.raises(UsageError, match="video embeddings have 4 dims but text embeddings 3"):
        score_texts(FakeModel(3), ["x"], w)
