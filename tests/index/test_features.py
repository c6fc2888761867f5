"""``milnce.index.features``: Building an index from an extraction's feature files, without the model
(``index_features``)."""

from __future__ import annotations

import numpy as np
import pytest

from index_fixtures import feature_file, windows
from milnce.errors import UsageError
from milnce.index import Index, index_features

# ----- item 5: non-finite numbers -------------------------------------------------------------


def test_nan_features_refused_naming_the_file(tmp_path):
    vids = tmp_path / "videos"
    vids.mkdir()
    (vids / "a.mp4").write_bytes(b"a" * 10)
    feats = tmp_path / "f"
    feature_file(feats / "a.npz", vids / "a.mp4", nan=True)
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
