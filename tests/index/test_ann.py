"""``milnce.index.ann``: The optional approximate index (faiss IVF; ``milnce index --ann``)."""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import numpy as np
import pytest

from index_fixtures import key, synthetic_index
from milnce.index import Index

pytestmark = pytest.mark.usefixtures("reuse_model")  # CLI commands reuse the loaded model


# --------------------------------------------------------------------------------------------
# ANN


def test_ann_recall_and_rescored_results(tmp_path):
    pytest.importorskip("faiss")
    idx = synthetic_index(tmp_path / "ix", videos=40, windows=50)
    rng = np.random.default_rng(3)
    rows = rng.choice(idx.num_rows, 50, replace=False)
    queries = np.asarray(idx._vectors[rows]) + 0.5 * rng.standard_normal((50, 512)).astype(np.float32)
    info = idx.build_ann(queries=queries)
    assert info["recall_at_10"] >= 0.95
    assert idx.ann() is not None
    q = queries[:5]
    approx = idx.search_embeddings(q, k=10, merge=False)
    exact = idx.search_embeddings(q, k=10, merge=False, exact=True)
    hits = np.mean([len({(m.video_id, m.start) for m in a} & {(m.video_id, m.start) for m in e}) / 10
                    for a, e in zip(approx, exact)])
    assert hits >= 0.9
    ex = {(m.video_id, m.start): m.score for r in exact for m in r}
    for r in approx:  # scores are exact dot products even through the ANN index
        for m in r:
            if (m.video_id, m.start) in ex:
                assert m.score == pytest.approx(ex[(m.video_id, m.start)], rel=1e-5)
    # rows added after the ANN build are still found (scanned exactly)
    target = np.full(512, 3.0, np.float32)
    emb = SimpleNamespace(embeddings=np.stack([target, -target]), starts=np.array([0.0, 1.6]),
                          ends=np.array([3.2, 4.8]), duration=5.0)
    vid = idx.add_video("/nonexistent/late.mp4", emb, size=1, mtime=1.0, content_hash="late")
    top = idx.search_embeddings(target, k=1, merge=False)[0][0]
    assert top.video_id == vid and top.start == 0.0
    idx.close()
    with Index.open(tmp_path / "ix") as r:
        assert r.ann() is not None and r.meta["ann"]["recall_at_10"] >= 0.95


# --------------------------------------------------------------------------------------------
# 3. Reliability


def test_damaged_ann_file_falls_back_to_exact_and_is_rebuilt(tmp_path, caplog):
    pytest.importorskip("faiss")
    idx = synthetic_index(tmp_path / "ix", videos=20, windows=50)
    assert idx.ann_status()["state"] == "not built"
    idx.build_ann()
    assert idx.ann_status()["state"] == "ok"
    q = np.asarray(idx._vectors[3])
    exact = idx.search_embeddings(q, k=5, exact=True)[0]
    idx.close()
    ann_file = next((tmp_path / "ix").glob("ann-*.faiss"))
    os.truncate(ann_file, 500)
    with caplog.at_level(logging.WARNING, logger="milnce.index"), Index.open(tmp_path / "ix") as r:
        st = r.ann_status()
        assert st["state"] == "damaged" and st["reason"]
        assert [key(m) for m in r.search_embeddings(q, k=5)[0]] == [key(m) for m in exact]
    assert "damaged" in caplog.text and "exactly" in caplog.text
    with Index.open(tmp_path / "ix", readonly=False) as w:  # what `milnce index --ann` does
        w.build_ann()
        assert w.ann_status()["state"] == "ok"
    ann_file.unlink()
    with Index.open(tmp_path / "ix") as r:
        assert r.ann_status()["state"] == "missing" and r.ann() is None
