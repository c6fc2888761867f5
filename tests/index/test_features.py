"""``milnce.index.features``: Building an index from an extraction's feature files, without the model
(``index_features``)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from milnce.errors import UsageError
from milnce.index import Index, index_features
from milnce.windows import WindowSettings

W = WindowSettings(fps=10.0, num_frames=8, size=32, stride=4)


def windows(n: int = 4, seed: int = 0, *, nan: bool = False) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, 512)).astype(np.float32)
    starts = np.arange(n, dtype=np.float64) * 0.4
    if nan:
        emb[1, 3] = np.nan
    return SimpleNamespace(starts=starts, ends=starts + 0.8, embeddings=emb, duration=float(starts[-1] + 0.8))


# ----- issue 15 item 2: collection roots ------------------------------------------------------


def _feature_file(path: Path, source: Path, *, nan: bool = False) -> None:
    from milnce.extract.store import FORMAT, write_feature_file

    st = os.stat(source)
    w = windows(nan=nan)
    meta = {"format": FORMAT, "settings": {**W.to_dict(), "start": None, "end": None, "pad": "repeat"},
            "weights": "w1", "precision": "fp32",
            "source": {"path": str(source), "size": st.st_size, "mtime_ns": st.st_mtime_ns}}
    write_feature_file(str(path), {"video_embedding": w.embeddings, "start": w.starts, "end": w.ends,
                                   "duration": np.asarray(w.duration)}, meta)


# ----- item 5: non-finite numbers -------------------------------------------------------------


def test_nan_features_refused_naming_the_file(tmp_path):
    vids = tmp_path / "videos"
    vids.mkdir()
    (vids / "a.mp4").write_bytes(b"a" * 10)
    feats = tmp_path / "f"
    _feature_file(feats / "a.npz", vids / "a.mp4", nan=True)
    with pytest.raises(UsageError, match=r"a\.npz.*NaN"):
        index_features(feats, tmp_path / "ix", roots=[vids], progress=False)
    with Index.open(tmp_path / "ix") as idx:
        assert idx.num_videos == 0
    w = Index.open(tmp_path / "ix", readonly=False)
    with pytest.raises(UsageError, match="NaN"):  # the library's write path guards the same
        w.add_video(str(vids / "a.mp4"), windows(nan=True), size=10, mtime=0.0, content_hash="")
    bad = windows()
    bad.starts[0] = np.inf
    with pytest.raises(UsageError):
        w.add_video(str(vids / "a.mp4"), bad, size=10, mtime=0.0, content_hash="")
    assert w.num_rows == 0
    w.close()
