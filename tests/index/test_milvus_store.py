"""No half-updated video in a Milvus collection's results: a video re-indexed or removed is
replaced in steps (new windows under a new generation, the record switched, the old windows
deleted) and a writer stopped between any two steps leaves searches answering as before the
change or as after it, never a mix; what an interrupted writer left is cleaned by the next one."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from milvus_fixtures import require_milvus_lite, synthetic_videos

require_milvus_lite()

from milnce.index import Index  # noqa: E402
from milnce.index.milvus_store import MilvusIndex  # noqa: E402
from milnce.windows import WindowSettings  # noqa: E402


class Crash(Exception):
    pass


class FailingClient:
    """The Milvus client, failing the first call that ``fail(method, kwargs)`` picks."""

    def __init__(self, client: Any, fail: Any) -> None:
        self._client, self._fail = client, fail

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._fail is not None and self._fail(name, args, kwargs):
                self._fail = None
                raise Crash(name)
            return real(*args, **kwargs)

        return call


def _answers(ix: Any, qs: np.ndarray) -> list[list[tuple[int, float, float, float]]]:
    return [[(m.video_id, m.start, m.end, round(m.score, 3)) for m in res]
            for res in ix.search_embeddings(qs, 12)]


def _changed(item: tuple, seed: int) -> tuple:
    path, emb, size, mtime, h = item
    rng = np.random.default_rng(seed)
    n = len(emb.embeddings) + 2
    new = SimpleNamespace(embeddings=(3 * rng.standard_normal((n, 512))).astype(np.float32),
                          starts=np.arange(n) * 1.6, ends=np.arange(n) * 1.6 + 3.2, duration=n * 1.6 + 1.6)
    return (path, new, size + 1, mtime + 1, h + "-new")


@pytest.mark.slow
@pytest.mark.parametrize("step", ["windows", "switch", "cleanup"])
def test_a_reindex_stopped_at_any_step_is_all_or_nothing(step: str, tmp_path: Path) -> None:
    items = synthetic_videos(30, seed=5)
    old = Index.create_for(tmp_path / "old", "w", WindowSettings())
    new = Index.create_for(tmp_path / "new", "w", WindowSettings())
    old.add_videos(items)
    new.add_videos(items)
    changed = _changed(items[4], 9)
    new.add_videos([changed])
    db = str(tmp_path / "g.db")
    mv = MilvusIndex.create_for(db, "w", WindowSettings())
    mv.add_videos(items)
    qs = np.concatenate([changed[1].embeddings[:3], np.random.default_rng(1).standard_normal((3, 512))]).astype(np.float32)
    before, after = _answers(old, qs), _answers(new, qs)
    assert before != after and _answers(mv, qs) == before

    real = mv._client
    picks = {  # stop the writer at one step of the replacement
        "windows": lambda m, a, k: m == "upsert" and a and a[0] == mv.collection,
        "switch": lambda m, a, k: m == "upsert" and a and a[0] == mv.records_collection,
        "cleanup": lambda m, a, k: m == "delete" and a and a[0] == mv.collection and "gen != 2" in (k.get("filter") or ""),
    }
    mv._client = FailingClient(real, picks[step])
    with pytest.raises(Crash):
        mv.add_videos([changed])
    mv._client = real
    mv.close()

    with MilvusIndex.open(db) as seen:  # what any reader sees now
        assert _answers(seen, qs) == (after if step == "cleanup" else before)
        if step != "windows":
            assert seen.count_windows() > seen.num_live  # the stopped writer's leftovers exist ...
    with MilvusIndex.open(db, readonly=False) as w:  # ... and the next writer of that video cleans them
        w.add_videos([changed])
        assert _answers(w, qs) == after
        assert w.count_windows() == w.num_live == new.num_live
    old.close()
    new.close()


def test_a_removal_stopped_after_the_record_hides_the_video(tmp_path: Path) -> None:
    items = synthetic_videos(20, seed=6)
    emb = Index.create_for(tmp_path / "e", "w", WindowSettings())
    emb.add_videos(items)
    emb.remove_videos([3])
    db = str(tmp_path / "r.db")
    mv = MilvusIndex.create_for(db, "w", WindowSettings())
    mv.add_videos(items)
    qs = np.stack([items[2][1].embeddings[0], np.random.default_rng(2).standard_normal(512)]).astype(np.float32)
    real = mv._client
    mv._client = FailingClient(real, lambda m, a, k: m == "delete" and a and a[0] == mv.collection)
    with pytest.raises(Crash):
        mv.remove_videos([3])
    mv._client = real
    mv.close()
    with MilvusIndex.open(db) as seen:
        assert not seen.has_row(3) and seen.count_windows() > seen.num_live
        assert _answers(seen, qs) == _answers(emb, qs)
    emb.close()
