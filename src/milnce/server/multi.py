"""Several indexes behind one server: ``IndexSet`` (one ``SearchService`` per index, by name).

Rules (README, "Web UI and JSON API"):

- Names: each index folder's base name (``-2``, ``-3`` ... for repeats), in the order given.
- Comparable scores: every index must record the same weights fingerprint and window settings
  as the first (``IndexMismatchError`` otherwise, naming the index and what differs), so a score
  means the same in all of them and the results of several indexes can be merged.
- Addressing: with several indexes, video routes take ``index=NAME`` (``/api/videos/3/file?index=
  kitchen``), ``like`` takes ``NAME:ID@SECONDS``, and every result carries ``index``; with one
  index the old unqualified URLs work unchanged (and qualified ones too).
- A search without ``index`` searches all and merges: each index ranks its own first
  ``offset + k`` results, the lists are merged by score, ties by the order the indexes were given
  (then, within an index, its own order: video id, then start). Percentiles stay per index (each
  is measured against its own index's windows).
"""

from __future__ import annotations

import heapq
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from ..errors import MilnceError
from ..index import SearchableIndex, open_index
from ..printable import show_path
from ..protocols import Encoder
from .service import ApiError, SearchService

__all__ = ["IndexSet", "IndexMismatchError", "index_names", "check_comparable", "check_comparable_folders"]


class IndexMismatchError(MilnceError, ValueError):
    """Indexes that cannot be served together (other weights or window settings)."""


def index_names(folders: Sequence[str]) -> list[str]:
    """Unique names from folders' base names (``a``, ``a-2``, ...)."""
    out: list[str] = []
    for f in folders:
        base = os.path.basename(os.path.normpath(os.fspath(f))) or "index"
        name, n = base, 1
        while name in out:
            n += 1
            name = f"{base}-{n}"
        out.append(name)
    return out


def check_comparable(indexes: Iterable[tuple[str, str, str, Mapping[str, Any]]]) -> None:
    """Refuse indexes whose scores cannot be merged: each ``(name, folder, weights fingerprint,
    window settings)`` must record the first's weights and settings (``IndexMismatchError``
    naming the index and what differs)."""
    first: tuple[str, str, dict[str, Any]] | None = None
    for name, folder, weights_id, settings in indexes:
        here = dict(settings)
        if first is None:
            first = (name, weights_id, here)
        elif weights_id != first[1]:
            raise IndexMismatchError(f"index {name!r} ({show_path(folder)}) was built with other weights ({weights_id}) "
                                     f"than {first[0]!r} ({first[1]}): their scores cannot be compared; serve them separately")
        elif here != first[2]:
            raise IndexMismatchError(f"index {name!r} ({show_path(folder)}) has other window settings ({here}) than "
                                     f"{first[0]!r} ({first[2]}): their scores cannot be compared; serve them separately")


def check_comparable_folders(folders: Sequence[str], collection: str | None = None) -> None:
    """``check_comparable`` for index folders (named as ``index_names`` names them), each opened in
    turn for its records only: the check ``milnce serve`` makes before the model loads."""

    def facts() -> Iterator[tuple[str, str, str, dict[str, Any]]]:
        for name, d in zip(index_names(folders), folders):
            with open_index(d, collection=collection) as ix:
                here = (name, d, ix.weights_id, dict(ix.settings))
            yield here

    check_comparable(facts())


class IndexSet:
    """The indexes a server serves, each with its ``SearchService`` (thread-safe)."""

    def __init__(self, indexes: Mapping[str, SearchableIndex], model: Encoder, **service_opts: Any) -> None:
        if not indexes:
            raise IndexMismatchError("no index to serve")
        check_comparable((name, ix.directory, ix.weights_id, ix.settings) for name, ix in indexes.items())
        lock = threading.Lock()
        self.services: dict[str, SearchService] = {}
        for name, ix in indexes.items():
            s = SearchService(ix, model, **service_opts)
            s.model_lock = lock  # one model call at a time across all indexes
            s.name, s.qualified = name, len(indexes) > 1
            self.services[name] = s
        shared = self.first.queries
        for s in self.services.values():
            s.queries = shared  # a query is embedded once for every index
        self.order = {name: i for i, name in enumerate(self.services)}

    @property
    def first(self) -> SearchService:
        return next(iter(self.services.values()))

    @property
    def several(self) -> bool:
        return len(self.services) > 1

    def get(self, name: str | None) -> SearchService:
        """The service ``name`` addresses; without a name, the only one (422 when several)."""
        if name:
            s = self.services.get(name)
            if s is None:
                raise ApiError(404, f"no index named {name!r} (see /api/indexes)")
            return s
        if self.several:
            raise ApiError(422, f"{len(self.services)} indexes are served: give index=NAME (see /api/indexes)")
        return self.first

    def split_like(self, like: str, index: str | None) -> tuple[SearchService, str]:
        """``NAME:ID@SECONDS`` (or ``ID@SECONDS`` with ``index``, or with one index) -> (service, ``ID@SECONDS``)."""
        name, sep, rest = like.partition(":")
        if sep:
            if index and index != name:
                raise ApiError(422, f"like names index {name!r} but index={index!r}")
            return self.get(name), rest
        return self.get(index), like

    def listing(self) -> list[dict[str, Any]]:
        """``/api/indexes``: name, folder, videos, windows, weights fingerprint, settings, ANN state."""
        out = []
        for name, s in self.services.items():
            ix = s.index
            out.append({"name": name, "path": ix.directory, "videos": s.videos_count, "windows": len(ix),
                        "weights_id": ix.weights_id, "settings": dict(ix.settings),
                        "ann": ix.ann_status().get("state")})
        return out

    def search_all(self, text: str, like: str, k: int, merge: bool, by_video: bool, *, offset: int = 0,
                   **opts: Any) -> dict[str, Any]:
        """One search over every index, merged (see the module docstring): results ``offset ..
        offset + k - 1`` of the merged ranking."""
        want = offset + k
        bodies: list[tuple[str, dict[str, Any]]] = []
        source = None
        if like:
            src, rest = self.split_like(like, None)
            first = src.search("", rest, want, merge, by_video, offset=0, **opts)
            source = {"index": src.name, **(first["like"] or {})}
            emb = src.like_source(rest)[1]
            for name, s in self.services.items():
                body = first if s is src else s.search_vector(emb, want, merge, by_video, **opts)
                bodies.append((name, body))
        else:
            for name, s in self.services.items():
                bodies.append((name, s.search(text, "", want, merge, by_video, offset=0, **opts)))
        lists = [[(-float(m["score"]), self.order[name], j, m) for j, m in enumerate(b["results"])] for name, b in bodies]
        merged = [t[3] for t in heapq.merge(*lists, key=lambda t: (t[0], t[1], t[2]))][offset:want]
        head = bodies[0][1]
        notes = []
        for _, b in bodies:
            if b.get("message") and b["message"] not in notes:
                notes.append(b["message"])
        modes = [b.get("mode") for _, b in bodies]
        mode = "hybrid" if "hybrid" in modes else head.get("mode")  # visual scores are hybrid ones without speech
        return {**{key: head.get(key) for key in ("words", "unknown_words", "not", "not_weight", "filter")},
                "mode": mode, "speech_weight": next((b.get("speech_weight") for _, b in bodies
                                                     if b.get("speech_weight") is not None), None),
                "like": source, "results": merged, "offset": offset, "index": None,
                "indexes": list(self.services), "message": " ".join(notes) or None}
