"""``milnce.index.snapshot``: An index as of one commit."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from milnce.index import Index
from milnce.windows import WindowSettings

W = WindowSettings(fps=10.0, num_frames=8, size=32, stride=4)


def windows(n: int = 4, seed: int = 0, *, nan: bool = False) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, 512)).astype(np.float32)
    starts = np.arange(n, dtype=np.float64) * 0.4
    if nan:
        emb[1, 3] = np.nan
    return SimpleNamespace(starts=starts, ends=starts + 0.8, embeddings=emb, duration=float(starts[-1] + 0.8))


def make_index(folder: Path, files: list[Path], roots: list[Path] | None = None) -> Index:
    """A writable index (weights "w1", no model) holding ``files`` as videos (random windows)."""
    idx = Index.create_for(folder, "w1", W, roots=roots if roots is not None else [])
    for i, f in enumerate(files):
        st = os.stat(f)
        idx.add_video(str(f), windows(seed=i), size=st.st_size, mtime=st.st_mtime, content_hash="")
    return idx


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


def fake_model(weights_id: str = "synthetic"):
    return SimpleNamespace(weights_id=weights_id, info=None)


def fake_emb(n: int, rng: np.random.Generator, center: np.ndarray | None = None):
    c = rng.standard_normal(512).astype(np.float32) if center is None else center
    e = c + 0.3 * np.cumsum(rng.standard_normal((n, 512)).astype(np.float32) * 0.2, axis=0)
    starts = np.arange(n) * 1.6
    return SimpleNamespace(embeddings=e.astype(np.float32), starts=starts, ends=starts + 3.2, duration=n * 1.6 + 1.6)


def synthetic_index(directory: Path, videos: int = 20, windows: int = 50, seed: int = 0) -> Index:
    rng = np.random.default_rng(seed)
    idx = Index.create(directory, fake_model())
    for v in range(videos):
        idx.add_video(f"/nonexistent/v{v:03d}.mp4", fake_emb(windows, rng), size=1000 + v, mtime=1.0,
                      content_hash=f"h{v}")
    return idx


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
