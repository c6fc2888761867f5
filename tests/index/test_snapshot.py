"""``milnce.index.snapshot``: An index as of one commit."""

from __future__ import annotations

import os

import numpy as np
import pytest

from index_fixtures import fake_emb, make_index, synthetic_index, windows
from milnce.index import Index


def test_snapshot_is_immutable_and_create_needs_no_model(tmp_path):
    f = tmp_path / "a.mp4"
    f.write_bytes(b"x" * 100)
    idx = make_index(tmp_path / "ix", [f], roots=[tmp_path])
    before = idx.snapshot
    assert before.num_live == 4 and len(before.records) == 1
    g = tmp_path / "b.mp4"
    g.write_bytes(b"y" * 50)
    idx.add_video(str(g), windows(6, 1), size=50, mtime=os.stat(g).st_mtime, content_hash="")
    after = idx.snapshot
    assert after is not before and after.num_live == 10 and before.num_live == 4  # the old one is unchanged
    with pytest.raises(TypeError):
        before.records[99] = None  # type: ignore[index]
    q = np.ones(512, np.float32)
    assert idx.search_embeddings(q, k=50, merge=False)[0] and len(before.scores(q)[0]) == 4
    assert idx.meta["weights_id"] == "w1" and idx.roots == [str(tmp_path)]
    idx.close()


@pytest.mark.usefixtures("reuse_model")
def test_refresh_sees_new_commits_while_searching(tmp_path):
    import threading

    writer = synthetic_index(tmp_path / "ix", videos=3, windows=20)
    reader = Index.open(tmp_path / "ix")
    assert len(reader.videos()) == 3 and not reader.refresh()
    q = np.random.default_rng(0).standard_normal((4, 512)).astype(np.float32)
    errors = []

    def hammer():
        try:
            for _ in range(30):
                for res in reader.search_embeddings(q, k=5):
                    assert res and all(m.path.startswith("/nonexistent/") for m in res)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    for v in range(3, 8):
        writer.add_video(f"/nonexistent/v{v:03d}.mp4", fake_emb(20, np.random.default_rng(v)), size=1, mtime=1.0,
                         content_hash=f"h{v}")
        reader.refresh()
    for t in threads:
        t.join()
    assert not errors
    assert len(reader.videos()) == 8 and len(reader) == 160
    writer.close()
    reader.close()
