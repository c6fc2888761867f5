"""Reading an index: ``IndexReader``, one opened index folder, read-only (see ``milnce.index``).

It reads the committed state from SQLite (checks in ``milnce.index.verify``) and publishes it as
an immutable ``milnce.index.snapshot.Snapshot``; ``refresh()`` picks up a later commit of the
writer (``milnce.index.writer.Index``, which is an ``IndexReader`` that also writes). Every
search takes the current snapshot once per call, so a concurrent commit never changes what a
running search sees: ``search``, ``search_embeddings``, ``search_like`` (ranking in
``milnce.index.ranking``), per-video scores (``curve``, ``video_moments``, ``scores``) and query
encoding (``encode_queries``, ``query_embedding``, ``like_embedding``, ``query_problem``).

Search memory-maps the store (``np.memmap``): the page cache holds the vectors once. Exact search
scans the int8 codes (a quarter of the bytes, ``milnce.index.screen``) and re-scores from the
float32 rows every window whose score could reach the top k under a proven bound on the
quantisation error, so it returns what a full float32 scan returns (``exact="scan"`` does that
scan). The ANN index (faiss IVF with 8-bit codes, ``--ann``) gives candidates that are re-scored
the same way, so scores are always exact dot products.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ..errors import UsageError
from .database import connect, from_db
from .errors import IndexFolderError, IndexMismatchError, IndexNotFoundError
from .filters import VideoFilter
from .hybrid import SpeechPlan, check_mode, check_speech_weight, plan_speech, speech_scale
from .layout import DB_NAME, DIM, norm_path, user_path
from .negatives import DEFAULT_NOT_WEIGHT
from .ranking import moments_of, percentile_sample, query_matrix, search_snapshot, video_moment_rows, video_scores
from .records import Moment, VideoRow
from .roots import serving_roots
from .snapshot import Snapshot, store_path
from .state import IndexState
from .textquery import TextQueries
from .transcripts import Transcripts
from .verify import check_settings

if TYPE_CHECKING:  # pragma: no cover
    from ..protocols import Encoder

__all__ = ["IndexReader", "index_database"]

R = TypeVar("R", bound="IndexReader")


def index_database(directory: str | os.PathLike[str]) -> tuple[str, str]:
    """The index folder (absolute, ``~`` expanded) and its database file; ``IndexNotFoundError``
    when there is no index there."""
    d = user_path(directory)
    db = os.path.join(d, DB_NAME)
    if not os.path.isdir(d):
        raise IndexNotFoundError(f"no index at {directory}: the folder does not exist "
                                 "(build one with: milnce index VIDEOS... --index DIR)")
    if not os.path.isfile(db):
        raise IndexNotFoundError(f"no index at {directory}: {DB_NAME} is missing "
                                 "(build one with: milnce index VIDEOS... --index DIR)")
    return d, db


class IndexReader(TextQueries[Snapshot]):
    """An opened index folder, read-only: a consistent snapshot (``refresh()`` picks up later
    commits) and every search over it.

    ``IndexReader.open(folder, model)`` (or ``Index.open(folder, model)``) for searching with
    text; ``search_embeddings`` works without a model. Thread-safe for searches.
    """

    readonly = True

    def __init__(self, directory: str, con: sqlite3.Connection, model: Encoder | None = None) -> None:
        self.directory = directory
        self.model = model
        self.state = IndexState(directory, con)  # the committed records; the writer updates them

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def open(cls, directory: str | os.PathLike[str], model: Encoder | None = None) -> IndexReader:
        """Open an existing index for reading. ``model``: a ``MILNCE`` whose weights built the
        index (for text queries)."""
        d, db = index_database(directory)
        try:
            idx = IndexReader(d, connect(db, True), model)
        except sqlite3.DatabaseError as exc:
            raise IndexFolderError(f"{db}: not a readable index database ({exc})") from exc
        try:
            if model is not None:
                idx.check_model(model)
        except BaseException:
            idx.close()
            raise
        return idx

    def check_model(self, model: Encoder) -> None:
        """Refuse a model whose weights differ from those that built the index."""
        self.check_weights(getattr(model, "weights_id", None))

    def check_weights(self, wid: str | None) -> None:
        """Refuse embeddings of weights other than those that built the index."""
        if wid != self.weights_id:
            raise IndexMismatchError(
                f"the index at {self.directory} was built with other weights (id {self.weights_id}"
                f"{', ' + self.meta['weights_name'] if self.meta.get('weights_name') else ''}) than the ones "
                f"loaded (id {wid}); its scores would be meaningless. Load the same --weights, or "
                "build a new index for these weights in another folder"
            )

    def check_settings(self, settings: dict[str, Any]) -> None:
        """Refuse window settings that differ from the index's."""
        check_settings(self.directory, self.settings, settings)

    # -- state: the committed records, published as snapshots ---------------------------------

    @property
    def snapshot(self) -> Snapshot:
        """The current committed state (immutable; a later commit publishes a new one)."""
        return self.state.snapshot

    @property
    def meta(self) -> dict[str, Any]:
        return self.state.meta

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.state.meta["settings"])

    @property
    def weights_id(self) -> str:
        return str(self.state.meta["weights_id"])

    @property
    def dim(self) -> int:
        return int(self.state.meta.get("dim", DIM))

    @property
    def num_rows(self) -> int:
        return int(self.state.meta["num_rows"])

    @property
    def generation(self) -> int:
        return int(self.state.meta["generation"])

    @property
    def num_live(self) -> int:
        return self.state.live

    @property
    def roots(self) -> list[str]:
        """The collection roots recorded for the index (``milnce.index.roots``)."""
        return list(self.state.meta.get("roots") or [])

    def video_id_of(self, path: str | os.PathLike[str]) -> int | None:
        """The id of the video recorded at ``path`` (absolute), or None (the current records)."""
        return self.state.paths.get(norm_path(path))

    def row(self, video_id: int) -> VideoRow:
        """The stored row of a video (``KeyError`` if unknown; the current records)."""
        return self.state.rows[int(video_id)]

    def has_row(self, video_id: int) -> bool:
        """Whether a video id is recorded (the current records)."""
        return int(video_id) in self.state.rows

    def rows(self) -> list[VideoRow]:
        """Every stored video row (the current records)."""
        return list(self.state.rows.values())

    # Private views kept for the index's own tests.
    @property
    def _records(self) -> Mapping[int, VideoRow]:
        return self.snapshot.records

    @property
    def _vectors(self) -> np.ndarray:
        return self.snapshot.vectors

    def _path(self, kind: str, gen: int | None = None) -> str:
        return store_path(self.directory, kind, self.generation if gen is None else gen)

    def refresh(self) -> bool:
        """Reload if another process committed changes; returns whether it did (running searches
        keep the snapshot they started with)."""
        return self.state.refresh()

    def __len__(self) -> int:
        """Number of (live) windows."""
        return self.num_live

    def __enter__(self: R) -> R:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the database connection and the snapshot's descriptors."""
        self.state.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.directory!r}, {len(self.state.rows)} videos, {self.num_live} windows, "
                f"weights {self.weights_id}, ann={'yes' if self.meta.get('ann') else 'no'})")

    # -- videos -------------------------------------------------------------------------------

    @property
    def num_videos(self) -> int:
        """Number of indexed videos."""
        return len(self.snapshot.records)

    def windows(self, video_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(starts, ends, embeddings)`` of one video's windows (copies)."""
        return self.snapshot.windows(video_id)

    def errors(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of the videos that could not be read."""
        with self.state.lock:
            return sorted((from_db(p), r) for p, r in self.state.con.execute("SELECT path, reason FROM errors"))

    def live_mask(self) -> np.ndarray | None:
        """Boolean mask of live rows, or None when every row is live."""
        return self.snapshot.live_mask()

    def serving_roots(self) -> tuple[list[str], str | None]:
        """The folders (or files) the indexed videos may be served from, and a note when they
        were guessed (``milnce.index.roots.serving_roots``); computed once per snapshot."""
        snap = self.snapshot

        def compute() -> tuple[list[str], str | None]:
            recorded = list(snap.meta.get("roots") or [])
            return serving_roots(recorded, (r.path for r in snap.records.values()))

        return snap.memo("serving_roots", compute)

    def check_files(self) -> None:
        """Refuse (``IndexDamagedError``) a store whose files were cut shorter than the committed
        rows since they were opened: before a scan, as every search does."""
        self.snapshot.check_files()

    # -- ANN ----------------------------------------------------------------------------------

    def ann(self) -> Any:
        """The loaded approximate index (faiss) or None (none built, stale, damaged, or no faiss)."""
        return self.snapshot.ann()

    def ann_status(self) -> dict[str, Any]:
        """The approximate index's state for health checks: ``{"state": "ok" | "not built" |
        "missing" | "damaged" | "stale" | "no faiss", "file", "kind", "rows", "nprobe",
        "recall_at_10", "reason"}``. Anything but "ok" means searches are exact."""
        return self.snapshot.ann_status()

    # -- searching ----------------------------------------------------------------------------

    # -- transcripts (milnce.index.transcripts, milnce.index.hybrid) ----------------------------

    def transcript_store(self) -> Transcripts | None:
        """The index's transcript tables, or None (an index built before them: visual search only)."""
        return Transcripts(self.state.con, self.state.lock) if self.state.has_cues else None

    def speech_plans(self, snap: Snapshot, texts: Sequence[str], q: np.ndarray, mode: str,
                     speech_weight: float | None) -> list[SpeechPlan | None] | None:
        """Each query's speech side over ``snap`` (None in visual mode)."""
        store = self.transcript_store()
        if mode == "visual" or store is None:
            return None
        w = check_speech_weight(speech_weight)
        sample = percentile_sample(snap)
        plans: list[SpeechPlan | None] = []
        for text, qi in zip(texts, q):
            c = speech_scale(snap, qi, sample)
            c = c if c > 0 else 1.0  # a zero query (no word the model knows): speech alone decides
            scale = c if mode == "speech" else w * c
            plans.append(plan_speech(snap, store.speech_matches(text, snap.records.keys()), mode, scale))
        return plans

    def search_embeddings(self, text_emb: np.ndarray, k: int = 10, *, merge: bool = True, by_video: bool = False,
                          exact: bool | str = False, exclude_videos: Iterable[int] = (),
                          neg: np.ndarray | None = None, not_weight: float = DEFAULT_NOT_WEIGHT,
                          video_filter: VideoFilter | None = None, offset: int = 0,
                          speech_text: Sequence[str] | None = None, mode: str = "hybrid",
                          speech_weight: float | None = None) -> list[list[Moment]]:
        """Like ``search`` for text embeddings (Q x 512 or 512; ``neg``: K x 512 negative ones).
        ``exact``: False = the ANN index if one was built, else exact; True = exact (int8
        screening + float32 re-scoring, the same results as a full scan); ``"scan"`` = the plain
        full float32 scan. With the ANN index the candidate videos are approximate (each moment
        and score is still exact); searches with negatives are always exact. ``speech_text``: the
        sentence of each query, for the speech side of ``mode`` ("hybrid" or "speech",
        ``milnce.index.hybrid``)."""
        snap = self.snapshot  # one snapshot for the whole search: later commits do not change it
        q = query_matrix(text_emb, snap.dim)
        nq = None if neg is None or len(neg) == 0 else query_matrix(neg, snap.dim)
        k = int(k)
        if k < 1:
            raise UsageError(f"k must be >= 1, got {k}")
        plans = None
        if speech_text is not None:
            if len(speech_text) != len(q):
                raise UsageError(f"{len(speech_text)} speech texts for {len(q)} query embeddings")
            plans = self.speech_plans(snap, speech_text, q, check_mode(mode) or "hybrid", speech_weight)
            if plans is None and mode == "speech":
                return [[] for _ in range(len(q))]  # no transcripts: nothing is said
        return search_snapshot(snap, q, k, merge=merge, by_video=by_video, exact=exact,
                               exclude_videos=exclude_videos, neg=nq, not_weight=not_weight,
                               video_filter=video_filter, offset=int(offset), speech=plans)

    # -- curves, query by example -------------------------------------------------------------

    def curve(self, video_id: int, query: str | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The score of every window of one video for a query (a sentence or an embedding), in time
        order: ``(starts, ends, scores)`` (seconds, seconds, float32 dot products). ``KeyError``
        for an unknown video id."""
        q = self.query_embedding(query)
        snap = self.snapshot
        pos = snap.position(video_id)
        rs, re_, _ = snap.ranges()
        snap.check_files()
        t = np.array(snap.times[int(rs[pos]):int(re_[pos])])
        return t[:, 0], t[:, 1], video_scores(snap, pos, q)

    def video_moments(self, video_id: int, query: str | np.ndarray, k: int | None = None) -> list[Moment]:
        """All moments of one video for a query, best first (the first ``k``): the partition of its
        windows that ``search`` ranks (``milnce.index.moments``)."""
        q = self.query_embedding(query)
        snap = self.snapshot
        pos = snap.position(video_id)
        snap.check_files()
        found = video_moment_rows(snap, pos, q)
        return moments_of(snap, found if k is None else found[:max(0, int(k))], q)

    def snapshot_windows(self, snap: Snapshot, video_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(starts, ends, embeddings)`` of one video's windows in ``snap`` (copies)."""
        return snap.windows(video_id)

    def scores(self, text_emb: np.ndarray, rows: slice | None = None) -> np.ndarray:
        """Exact dot products of text embeddings (Q x 512) with the stored windows (Q x N rows);
        dead rows score -inf."""
        return self.snapshot.scores(text_emb, rows)
