"""``milnce.video.result``: One video's windows (``VideoWindows``) and its one ``.npz`` format, read without
pickle."""

from __future__ import annotations

import numpy as np
import pytest

import milnce
from milnce.extract.store import StoreError, read_feature_file
from milnce.video.result import EmbeddingsFileError, VideoWindows, check_crc, check_structure, failure_reason
from video_fixtures import SMALL_WINDOWS as S
from video_fixtures import flip_inside_member, write_feature_stub


@pytest.mark.parametrize("duration", [-5.0, 1e308, float("inf")])
def test_duration_member_refused(tmp_path, duration):
    write_feature_stub(tmp_path / "f.npz", tmp_path / "v.mp4", duration=duration)
    with pytest.raises(EmbeddingsFileError, match="duration"):
        VideoWindows.load(tmp_path / "f.npz")


def test_plain_npy_with_a_huge_header_is_refused_before_allocating(tmp_path):
    """A 200-byte ``.npy`` whose header claims (1e11, 512): the one feature-file reader checks the
    header against the file size (``milnce.video.npyfile``) before ``np.load`` would allocate it."""
    p = tmp_path / "clip.npy"
    with open(p, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**11, 512)})
        f.write(b"\0" * 64)
    with pytest.raises(EmbeddingsFileError, match="its header says shape"):
        VideoWindows.load(p)
    np.save(tmp_path / "ok.npy", np.ones((3, 512), np.float32))
    assert VideoWindows.load(tmp_path / "ok.npy").embeddings.shape == (3, 512)


@pytest.mark.usefixtures("reuse_model")
def test_failure_reason_strips_the_path_once():
    p = "/data/my videos/a.mp4"
    assert failure_reason(f"{p}: not a readable video file (Invalid data)", p) == "not a readable video file (Invalid data)"
    assert failure_reason("a.mp4: no video stream", p) == "no video stream"
    assert failure_reason("/data/my\nvideos/a.mp4: cut\nshort", "/data/my\nvideos/a.mp4") == "cut short"
    assert failure_reason("", p) == "unreadable"


# ------------------------------------------------------------------------------ the result type


def test_one_result_type_keeps_the_old_names_and_reads_old_files(tmp_path):
    w = VideoWindows("v.mp4", np.array([0.0, 0.4]), np.array([0.8, 1.2]), np.ones((2, 7), np.float32),
                     np.zeros((2, 3), np.float32), 1.5, settings=S)
    with pytest.warns(DeprecationWarning) as caught:  # the documented older names, deprecated
        assert w.video_embedding is w.embeddings and w.mixed_5c is w.features and w.start is w.starts
        assert w.end is w.ends and w.video_path == "v.mp4"
        assert milnce.video.VideoEmbeddings is VideoWindows and milnce.VideoEmbeddings is VideoWindows
        assert milnce.extract.JobResult is VideoWindows and milnce.extract.FeatureFile is VideoWindows
    assert len(caught) == 9 and all(str(c.filename) == __file__ for c in caught)  # blamed on the caller
    w.save(tmp_path / "new.npz")
    back = VideoWindows.load(tmp_path / "new.npz")
    assert back.embeddings.shape == (2, 7) and back.settings == S and back.duration == 1.5
    assert read_feature_file(tmp_path / "new.npz").embeddings.shape == (2, 7)
    # the embed-video format of before
    np.savez(tmp_path / "old.npz", embeddings=np.ones((3, 5), np.float32), starts=np.arange(3.0), ends=np.arange(3.0) + 1,
             fps=np.float64(10), num_frames=np.int64(8), size=np.int64(32), stride=np.int64(4))
    old = VideoWindows.load(tmp_path / "old.npz")
    assert old.embeddings.shape == (3, 5) and old.settings == S


def test_structure_check_and_crc_check(tmp_path):
    f = tmp_path / "x.npz"
    n = 4000  # members larger than what reading an array header pulls in
    VideoWindows("v.mp4", np.arange(n, dtype=float), np.arange(n, dtype=float), np.ones((n, 4), np.float32)).save(f)
    assert check_structure(str(f)) is None and check_crc(str(f)) is None
    flip_inside_member(f)
    assert check_structure(str(f)) is None  # a flipped data byte keeps the structure...
    assert "CRC" in check_crc(str(f))  # ...only the CRC sees it
    with pytest.raises(EmbeddingsFileError, match="x.npz"):
        VideoWindows.load(f)
    with pytest.raises(StoreError, match="x.npz"):
        read_feature_file(f)
    g = tmp_path / "y.npz"
    g.write_bytes((tmp_path / "x.npz").read_bytes()[:-40])
    assert check_structure(str(g)) is not None
