"""Reading and writing an index are two types: ``IndexReader`` (read-only, every search) and the
writer ``Index``, an ``IndexReader`` that also writes; ``SearchableIndex`` is the read surface the
server and the commands use, and ``IndexReader`` implements exactly it."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

from milnce.index import Index, IndexFolderError, IndexReader, SearchableIndex, VideoRow
from milnce.windows import WindowSettings


class _Windows:
    def __init__(self, emb: np.ndarray) -> None:
        self.embeddings = emb
        self.starts = np.arange(len(emb)) * 0.8
        self.ends = self.starts + 1.6
        self.duration = float(self.ends[-1])


def _build(d: Path, videos: int = 3, windows: int = 6) -> None:
    rng = np.random.default_rng(0)
    with Index.create_for(d, "w-test", WindowSettings.for_model(None), roots=["/v"]) as w:
        w.add_videos([(f"/v/{i}.mp4", _Windows(rng.standard_normal((windows, 512), dtype=np.float32)), 10 + i,
                       1.0, f"h{i}") for i in range(videos)])


def test_open_gives_a_reader_unless_readonly_false(tmp_path):
    _build(tmp_path / "ix")
    with Index.open(tmp_path / "ix") as r, IndexReader.open(tmp_path / "ix") as r2:
        assert type(r) is IndexReader and type(r2) is IndexReader and r.readonly
        assert not hasattr(r, "add_videos") and not hasattr(r, "compact") and not hasattr(r, "build_ann")
        assert r.num_videos == r2.num_videos == 3 and len(r) == 18
        assert repr(r).startswith("IndexReader(")
    with Index.open(tmp_path / "ix", readonly=False) as w:
        assert type(w) is Index and isinstance(w, IndexReader) and not w.readonly
        w.remove_videos([w.video_id_of("/v/0.mp4")])  # type: ignore[list-item]
        assert w.num_videos == 2  # a writer reads what it wrote
    w.close()  # twice is fine
    with pytest.raises(IndexFolderError, match="read-only"):
        w.remove_videos([1])  # a closed writer writes nothing


def test_a_reader_sees_the_writers_commits_after_refresh(tmp_path):
    _build(tmp_path / "ix")
    with IndexReader.open(tmp_path / "ix") as r:
        q = np.ones(512, np.float32)
        before = r.search_embeddings(q, k=50, merge=False)[0]
        with Index.open(tmp_path / "ix", readonly=False) as w:
            w.remove_paths(["/v/1.mp4"])
        assert r.num_videos == 3 and r.search_embeddings(q, k=50, merge=False)[0] == before  # its snapshot
        assert r.refresh() and r.num_videos == 2
        after = r.search_embeddings(q, k=50, merge=False)[0]  # percentiles: against the live windows
        assert [(m.video_id, m.start, m.score) for m in after] == \
            [(m.video_id, m.start, m.score) for m in before if not m.path.endswith("/1.mp4")]
        assert r.serving_roots() == (["/v"], None)
        r.check_files()


def _params(f: object) -> list[tuple[str, object, object]]:
    """Names, kinds and defaults of a function's parameters (annotations are strings here)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()]  # type: ignore[arg-type]


def _members(cls: type) -> dict[str, object]:
    return {n: v for n, v in vars(cls).items() if not n.startswith("_") or n in ("__len__", "__enter__", "__exit__")}


def test_the_reader_implements_the_searchable_surface(tmp_path):
    _build(tmp_path / "ix")
    with IndexReader.open(tmp_path / "ix") as r:
        assert isinstance(r, SearchableIndex)
    wanted = _members(SearchableIndex)
    wanted = {n: v for n, v in wanted.items() if n not in ("__init__", "__subclasshook__")}
    assert len(wanted) >= 25
    for name, member in wanted.items():
        if name == "directory":  # an attribute every reader sets
            continue
        mine = inspect.getattr_static(IndexReader, name)
        if isinstance(member, property):
            assert isinstance(mine, property), name
            continue
        assert _params(mine) == _params(member), name
    # the server and the commands need nothing else: each public read member of the reader they
    # call is in the protocol (what the reader has beyond it is for the writer and the tests)
    assert {"search", "search_embeddings", "search_like", "windows", "video", "row", "ann_status",
            "serving_roots", "check_files", "refresh"} <= set(wanted)
    assert VideoRow.__name__ == "VideoRow"
