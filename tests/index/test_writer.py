"""``milnce.index.writer``: The index store."""

from __future__ import annotations

import os

import numpy as np
import pytest

from index_fixtures import fake_emb, synthetic_index
from milnce.index import Index

pytestmark = pytest.mark.usefixtures("reuse_model")  # CLI commands reuse the loaded model


def test_compaction_keeps_results(tmp_path):
    rng = np.random.default_rng(1)
    idx = synthetic_index(tmp_path / "ix", videos=6, windows=20)
    q = rng.standard_normal((2, 512)).astype(np.float32)
    # re-add three videos: their old rows become dead
    for v in range(3):
        idx.add_video(f"/nonexistent/v{v:03d}.mp4", fake_emb(20, rng), size=1, mtime=2.0, content_hash="x")
    assert idx.num_rows == 180 and len(idx) == 120
    before = idx.search_embeddings(q, k=5)
    size_before = os.path.getsize(idx._path("vectors"))
    assert idx.compact()
    assert idx.num_rows == 120 and idx.generation == 1
    after = idx.search_embeddings(q, k=5)
    assert [[(m.video_id, m.start, round(m.score, 4)) for m in r] for r in before] == \
           [[(m.video_id, m.start, round(m.score, 4)) for m in r] for r in after]
    assert os.path.getsize(idx._path("vectors")) < size_before
    idx.close()
    assert sorted(n for n in os.listdir(tmp_path / "ix") if n.startswith("vectors")) == ["vectors-1.f32"]


def test_torn_tail_is_ignored_and_truncated(tmp_path):
    idx = synthetic_index(tmp_path / "ix", videos=2, windows=10)
    n = idx.num_rows
    vec, tim = idx._path("vectors"), idx._path("times")
    idx.close()
    with open(vec, "ab") as f:  # a crash after a partial append
        f.write(b"\x00" * 1000)
    with open(tim, "ab") as f:
        f.write(b"\x01" * 24)
    with Index.open(tmp_path / "ix") as r:
        assert r.num_rows == n and len(r.search_embeddings(np.ones(512, np.float32), k=3, merge=False)[0]) == 3
    Index.open(tmp_path / "ix", readonly=False).close()  # a writer cuts the tail
    assert os.path.getsize(vec) == n * 512 * 4 and os.path.getsize(tim) == n * 16
