"""Searching a Milvus collection with the embedded index's answers (``milnce.index.ranking``).

``MilvusState`` is one read of the records (the video rows with their live generation, the meta
row): a search takes one per call, as the embedded searches take one ``Snapshot``. Milvus only
proposes candidates: the top ``m`` windows by inner product (with negative queries, by the
inner product with ``q - w * neg_0``, which bounds the combined score from above), restricted
by a ``video in [...]`` expression when a filter lets few videos through (else every candidate is
re-checked here). Candidates of a generation that is not the video's live one (a re-indexed or
removed video whose rows are still being replaced) are dropped. Each candidate video's windows
are then fetched by key and scored with ``window_scores`` (the one canonical score), its moments
grown with ``iter_video_moments``, and the ranking is the embedded one: every moment scoring
above the lowest candidate's score (plus a rounding bound) is final; fewer than ``k``: the
candidates widen. Cosine and percentile come from ``cosine`` and the same 8,192-window sample
(the live windows in the embedded row order, ``row_start``)."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from ..errors import UsageError
from .errors import IndexFolderError
from .filters import VideoFilter, require_matches
from .milvus_client import key_parts, window_key
from .moments import iter_video_moments
from .negatives import DEFAULT_NOT_WEIGHT
from .ranking import PERCENTILE_SAMPLE, cosine, query_matrix
from .records import Moment, VideoRow
from .screen import window_scores
from .textquery import TextQueries

__all__ = ["MilvusQueryMixin", "MilvusState", "StaleRead", "search_state", "video_found", "moments_for", "MAX_TOPK", "EXPR_IDS"]

MAX_TOPK = 16384  # Milvus's largest search limit; past it every allowed video is scored
EXPR_IDS = 4096  # a filter passing more videos than this is re-checked here instead of in the expression
GET_BATCH = 4096  # keys per get
T = TypeVar("T")

Found = tuple[float, int, int, int, int]  # score, video id, first, last, peak (window positions in the video)


class StaleRead(Exception):
    """A video's live windows changed under a search (re-indexed or removed meanwhile)."""


class MilvusState:
    """One read of the records: ``records`` (video id -> ``VideoRow``, ``row_start`` the embedded
    row order), ``gens`` (video id -> live generation), ``meta``; fetches windows by key."""

    def __init__(self, client: Any, collection: str, meta: dict[str, Any], records: Mapping[int, VideoRow],
                 gens: Mapping[int, int]) -> None:
        self.client = client
        self.collection = collection
        self.meta = meta
        self.records = dict(records)
        self.gens = dict(gens)
        self.by_path = {r.path: r.id for r in self.records.values()}
        self.dim = int(meta.get("dim", 512))
        self.num_live = sum(int(r.num_windows) for r in self.records.values())
        self._memo: dict[str, Any] = {}
        self._lock = threading.Lock()

    def memo(self, key: str, compute: Callable[[], T]) -> T:
        with self._lock:
            if key not in self._memo:
                self._memo[key] = compute()
            return self._memo[key]  # type: ignore[no-any-return]

    def check_files(self) -> None:
        """Nothing to check on disk (the server's store check)."""

    def fetch(self, keys: list[int]) -> dict[int, dict[str, Any]]:
        """Window rows by key (``start``, ``end``, ``vector``)."""
        out: dict[int, dict[str, Any]] = {}
        for a in range(0, len(keys), GET_BATCH):
            got = self.client.get(self.collection, ids=keys[a:a + GET_BATCH], output_fields=["start", "end", "vector"])
            for r in got:
                out[int(r["pk"])] = r
        return out

    def windows_of(self, vids: Iterable[int]) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(starts, ends, float32 vectors)`` of each video's live windows; ``StaleRead`` when some are gone."""
        vids = [int(v) for v in vids]
        keys = [window_key(v, self.gens[v], j) for v in vids for j in range(int(self.records[v].num_windows))]
        rows = self.fetch(keys)
        if len(rows) != len(keys):
            raise StaleRead()
        out = {}
        pos = 0
        for v in vids:
            n = int(self.records[v].num_windows)
            part = [rows[k] for k in keys[pos:pos + n]]
            pos += n
            out[v] = (np.array([r["start"] for r in part], np.float64), np.array([r["end"] for r in part], np.float64),
                      np.array([r["vector"] for r in part], np.float32).reshape(n, self.dim))
        return out

    @property
    def settings(self) -> dict[str, Any]:
        """The window settings the collection was built with."""
        return dict(self.meta["settings"])

    def max_norm(self) -> float:
        return float(self.meta.get("max_norm") or 0.0)

    def percentile_sample(self) -> np.ndarray:
        """The live windows percentiles are measured against (``milnce.index.ranking``'s rule, in the
        embedded row order), float64."""

        def compute() -> np.ndarray:
            recs = sorted(self.records.values(), key=lambda r: int(r.row_start))
            n = self.num_live
            if n == 0:
                return np.zeros((0, self.dim))
            pick = np.arange(n) if n <= PERCENTILE_SAMPLE else np.linspace(0, n - 1, PERCENTILE_SAMPLE).astype(np.int64)
            starts = np.cumsum([0] + [int(r.num_windows) for r in recs])
            which = np.searchsorted(starts, pick, side="right") - 1
            keys = [window_key(recs[w].id, self.gens[recs[w].id], int(p - starts[w])) for w, p in zip(which, pick)]
            rows = self.fetch(keys)
            if len(rows) != len(keys):
                raise StaleRead()
            return np.array([rows[k]["vector"] for k in keys], np.float64).reshape(len(keys), self.dim)

        return self.memo("pct", compute)


class _Cursor:
    """One video's moments for one query, best first (window positions in the video)."""

    def __init__(self, vid: int, scores: np.ndarray, merge: bool) -> None:
        self.vid = vid
        self._it = iter_video_moments(scores, None if merge else -np.inf)
        self._next = next(self._it, None)

    def head(self) -> Found | None:
        if self._next is None:
            return None
        a, b, p, s = self._next
        return (s, self.vid, a, b, p)

    def take_above(self, threshold: float) -> list[Found]:
        out = []
        while self._next is not None and self._next[3] > threshold:
            h = self.head()
            assert h is not None
            out.append(h)
            self._next = next(self._it, None)
        return out


def _tolerance(state: MilvusState, q: np.ndarray, neg: np.ndarray | None, weight: float) -> float:
    """A bound on the difference between Milvus's float32 score and the canonical one (and its rounding)."""
    mx = state.max_norm()
    scale = float(np.linalg.norm(q)) + (weight * max(float(np.linalg.norm(n)) for n in neg) if neg is not None else 0.0)
    return 2e-5 * scale * (mx if mx > 0 and math.isfinite(mx) else 1e3) + 1e-6


class _Ranker:
    """The ranking of one query over one state (``milnce.index.ranking.rank``'s rule)."""

    def __init__(self, state: MilvusState, q: np.ndarray, neg: np.ndarray | None, weight: float,
                 allowed: set[int] | None, expr: str, cache: dict[int, Any]) -> None:
        self.state, self.q, self.neg, self.weight = state, q, neg, weight
        self.allowed, self.expr, self.cache = allowed, expr, cache
        probe = np.asarray(q, np.float64) - (weight * np.asarray(neg[0], np.float64) if neg is not None else 0.0)
        self.probe = probe.astype(np.float32)
        self.tol = _tolerance(state, q, neg, weight)

    def candidates(self, m: int) -> tuple[list[tuple[int, int]], float, bool]:
        """Live allowed ``(video, j)`` among Milvus's top ``m``, the threshold, whether all were seen."""
        st = self.state
        if m > MAX_TOPK:
            vids = [v for v in st.records if self.allowed is None or v in self.allowed]
            return [(v, j) for v in vids for j in range(int(st.records[v].num_windows))], -math.inf, True
        res = st.client.search(st.collection, data=[self.probe.tolist()], limit=m, filter=self.expr,
                               search_params={"metric_type": "IP"}, output_fields=[])
        hits = list(res[0]) if res else []
        complete = len(hits) < m
        thr = -math.inf if complete else float(hits[-1]["distance"]) + self.tol
        out = []
        for h in hits:
            v, g, j = key_parts(int(h.get("pk", h.get("id"))))
            if v in st.records and (st.gens[v] & 0xFFFF) == g and (self.allowed is None or v in self.allowed):
                out.append((v, j))
        return out, thr, complete

    def scores(self, vid: int) -> np.ndarray:
        return window_scores(self.cache[vid][2], self.q, self.neg, self.weight)

    def load(self, vids: Iterable[int]) -> None:
        need = [v for v in dict.fromkeys(vids) if v not in self.cache]
        if need:
            self.cache.update(self.state.windows_of(need))

    def rank(self, k: int, merge: bool, by_video: bool, skip: set[int], n_live: int) -> list[Found]:
        m = min(max(n_live, 1), max(2 * k, k + 8) if not by_video else max(4 * k, 32))
        cursors: dict[int, _Cursor] = {}
        scored: dict[int, np.ndarray] = {}
        found: list[Found] = []
        while True:
            cands, thr, complete = self.candidates(m)
            self.load(v for v, _ in cands if v not in skip)
            if not merge and not by_video:
                found = []
                for v, j in cands:
                    if v in skip:
                        continue
                    if v not in scored:
                        scored[v] = self.scores(v)
                    s = float(scored[v][j])
                    if s > thr:
                        found.append((s, v, j, j, j))
                found.sort(key=lambda t: (-t[0], t[1], t[2]))
                if len(found) >= k or complete:
                    return found[:k]
            else:
                for v in dict.fromkeys(v for v, _ in cands):
                    if v not in skip and v not in cursors:
                        cursors[v] = _Cursor(v, self.scores(v), merge)
                if by_video:
                    found = [h for c in cursors.values() if (h := c.head()) is not None and h[0] > thr]
                else:
                    for c in cursors.values():
                        found.extend(c.take_above(thr))
                if len(found) >= k or complete:
                    break
            m = 2 * m
        found.sort(key=lambda t: (-t[0], t[1], t[2]))
        return found[:k]


def moments_for(state: MilvusState, found: list[Found], q: np.ndarray, cache: dict[int, Any],
                neg: np.ndarray | None = None, weight: float = DEFAULT_NOT_WEIGHT) -> list[Moment]:
    """``Moment``s as ``milnce.index.ranking.moments_of`` makes them (cosine, percentile)."""
    if not found:
        return []
    need = [f[1] for f in found if f[1] not in cache]
    if need:
        cache.update(state.windows_of(dict.fromkeys(need)))
    peak_vecs = np.array([cache[f[1]][2][f[4]] for f in found], dtype=np.float64)
    pos = np.array([f[0] for f in found]) if neg is None else peak_vecs @ np.asarray(q, np.float64)
    cos = cosine(pos, q, peak_vecs).tolist()
    sample = np.sort(window_scores(state.percentile_sample(), q, neg, weight))
    exists: dict[int, bool] = {}
    out = []
    for (score, vid, first, last, peak), c in zip(found, cos):
        path = state.records[vid].path
        if vid not in exists:
            exists[vid] = os.path.isfile(path)
        starts, ends, _ = cache[vid]
        below = np.searchsorted(sample, score, side="left")
        ties = np.searchsorted(sample, score, side="right") - below
        pct = 100.0 * (below + 0.5 * ties) / len(sample) if len(sample) else float("nan")
        out.append(Moment(video_id=vid, path=path, start=float(starts[first]), end=float(ends[last]),
                          score=float(score), exists=exists[vid], peak=float(starts[peak]), cosine=float(c),
                          percentile=round(float(pct), 3)))
    return out


def search_state(state: MilvusState, q: np.ndarray, k: int, *, merge: bool = True, by_video: bool = False,
                 exclude_videos: Iterable[int] = (), neg: np.ndarray | None = None,
                 not_weight: float = DEFAULT_NOT_WEIGHT, video_filter: VideoFilter | None = None,
                 offset: int = 0) -> list[list[Moment]]:
    """Moments ``offset .. offset + k - 1`` of the ranking for each row of ``q`` (checked by the caller)."""
    allowed: set[int] | None = None
    n_videos = len(state.records)
    n_live = state.num_live
    if video_filter is not None and not video_filter.is_empty:
        videos = require_matches(list(state.records.values()), video_filter)
        allowed = {int(r.id) for r in videos}
        n_videos = len(videos)
        n_live = sum(int(r.num_windows) for r in videos)
    if state.num_live == 0:
        return [[] for _ in range(len(q))]
    expr = "" if allowed is None or len(allowed) > EXPR_IDS else f"video in {sorted(allowed)}"
    skip = {int(v) for v in exclude_videos}
    total = min(offset + k, n_videos if by_video else n_live)
    if total <= offset:
        return [[] for _ in range(len(q))]
    cache: dict[int, Any] = {}
    out = []
    for i in range(len(q)):
        ranker = _Ranker(state, q[i], neg, not_weight, allowed, expr, cache)
        found = ranker.rank(total, merge, by_video, skip, n_live)[offset:]
        out.append(moments_for(state, found, q[i], cache, neg, not_weight))
    return out


def video_found(state: MilvusState, vid: int, q: np.ndarray) -> tuple[list[Found], dict[int, Any]]:
    """All moments of one video for ``q``, best first, and the windows they were read from."""
    cache = state.windows_of([vid])
    scores = window_scores(cache[vid][2], q)
    return _Cursor(vid, scores, True).take_above(-np.inf), cache


class MilvusQueryMixin(TextQueries[MilvusState]):
    """``MilvusIndex``'s searches over its current ``snapshot`` (a ``MilvusState``); a read that
    finds a video replaced meanwhile by another process reloads the records and reads again."""

    collection: str

    @property
    def settings(self) -> dict[str, Any]:  # pragma: no cover - provided by MilvusIndex
        raise NotImplementedError

    def _load(self) -> None:  # pragma: no cover - provided by MilvusIndex
        raise NotImplementedError

    def windows(self, video_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(starts, ends, embeddings)`` of one video's windows."""
        st = self.snapshot
        if int(video_id) not in st.records:
            raise KeyError(f"no video with id {video_id!r} in the index")
        return self._read(lambda s: s.windows_of([int(video_id)])[int(video_id)])

    def snapshot_windows(self, snap: MilvusState, video_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``windows``: read again from a reloaded state when the video was replaced meanwhile."""
        return self.windows(video_id)

    def serving_roots(self) -> tuple[list[str], str | None]:
        """``IndexReader.serving_roots`` for the collection's records (``milnce.index.roots``)."""
        from .roots import serving_roots

        st = self.snapshot
        roots = list(getattr(self, "roots", []))  # MilvusIndex.roots
        return st.memo("serving_roots", lambda: serving_roots(roots, (r.path for r in st.records.values())))

    def check_files(self) -> None:
        """``IndexReader.check_files``: nothing to check on disk here (Milvus keeps the windows)."""
        self.snapshot.check_files()

    def _read(self, fn: Any) -> Any:
        for _ in range(3):
            try:
                return fn(self.snapshot)
            except StaleRead:
                self._load()  # replaced meanwhile by another process: read its new state
        raise IndexFolderError(f"collection {self.collection!r} kept changing during the read; try again")

    # -- searching --------------------------------------------------------------------------------

    def search_embeddings(self, text_emb: np.ndarray, k: int = 10, *, merge: bool = True, by_video: bool = False,
                          exact: bool | str = False, exclude_videos: Iterable[int] = (),
                          neg: np.ndarray | None = None, not_weight: float = DEFAULT_NOT_WEIGHT,
                          video_filter: VideoFilter | None = None, offset: int = 0,
                          speech_text: Sequence[str] | None = None, mode: str = "hybrid",
                          speech_weight: float | None = None) -> list[list[Moment]]:
        """``Index.search_embeddings`` (``exact`` is accepted: candidates are always re-scored exactly).
        A collection keeps no transcripts: ``mode`` "hybrid" is visual and "speech" finds nothing."""
        q = query_matrix(text_emb, self.dim)
        if mode == "speech":
            return [[] for _ in range(len(q))]
        nq = None if neg is None or len(neg) == 0 else query_matrix(neg, self.dim)
        k = int(k)
        if k < 1:
            raise UsageError(f"k must be >= 1, got {k}")
        if int(offset) < 0:
            raise UsageError(f"offset must be >= 0, got {offset}")
        skip = list(exclude_videos)
        return self._read(lambda s: search_state(s, q, k, merge=merge, by_video=by_video, exclude_videos=skip, neg=nq,
                                                 not_weight=not_weight, video_filter=video_filter, offset=int(offset)))

    def search_mode(self, mode: str | None) -> tuple[str, str]:
        """Visual search only: a Milvus collection keeps no transcripts (said in the note)."""
        chosen, _ = super().search_mode(mode)
        if chosen == "speech":
            return chosen, "speech: a Milvus collection keeps no transcripts, so nothing can match"
        return "visual", "visual only: a Milvus collection keeps no transcripts"

    def curve(self, video_id: int, query: str | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from .screen import window_scores

        q = self.query_embedding(query)
        starts, ends, vecs = self.windows(video_id)
        return starts, ends, window_scores(vecs, q)

    def video_moments(self, video_id: int, query: str | np.ndarray, k: int | None = None) -> list[Moment]:
        q = self.query_embedding(query)
        if int(video_id) not in self.snapshot.records:
            raise KeyError(f"no video with id {video_id!r} in the index")

        def read(s: MilvusState) -> list[Moment]:
            found, cache = video_found(s, int(video_id), q)
            return moments_for(s, found if k is None else found[:max(0, int(k))], q, cache)

        return self._read(read)  # type: ignore[no-any-return]

    def scores(self, text_emb: np.ndarray, rows: slice | None = None) -> np.ndarray:
        raise UsageError("scores over every stored row are not offered by a Milvus index: use search or curve")

