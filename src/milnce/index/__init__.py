"""A searchable, on-disk index of video moments.

Layout of an index folder::

    index.sqlite        videos, errors and settings (SQLite, WAL journal)
    vectors-G.f32       window embeddings: raw float32 rows (N x 512), append-only
    times-G.f64         window start/end seconds: raw float64 rows (N x 2), append-only
    codes-G.i8, aux-G.f32  int8 codes of the rows + (scale, residual norm, norm), append-only
    ann-G-R.faiss       optional approximate index over the first R rows (``--ann``)
    errors.log          videos that could not be read, with the reason
    .lock               held (fcntl) by the one process that writes

Modules: ``records`` (``Moment``, ``VideoRecord``, ``IndexReport``, row types), ``errors``,
``layout`` (file names, printable paths), ``roots`` (collection roots), ``database`` (SQLite
schema, connection, stored paths), ``verify`` (open-time checks), ``ann`` (faiss: open, build),
``snapshot`` (``Snapshot``: one committed state, immutable: records, row ranges, memory maps, ANN
handle), ``screen`` (``Searcher``: the int8-screened exact search over a snapshot), ``moments``
(what a moment is), ``ranking`` (ranking, moments, curves over a snapshot), ``state``
(``IndexState``: the committed records one process knows, published as snapshots), ``searchable``
(``SearchableIndex``: the read surface the server and the commands use), ``reader``
(``IndexReader``: an opened index, read-only, and every search), ``rowfiles`` (the store files:
append, truncate, compact), ``writer`` (``Index``: the one writer, an ``IndexReader`` that also
writes, publishing a snapshot per commit), ``ingest`` (what ``build`` and ``features`` share),
``build`` (``find_videos``, ``build_index``), ``features`` (``index_features``: from ``milnce
extract``'s files, no model), ``lock`` (the writer lock). Imports go one way, in that order.

``Index.open(folder, model)`` opens an index read-only (an ``IndexReader``, as
``IndexReader.open``); ``Index.open(folder, readonly=False)``, ``Index.create`` and
``Index.create_for`` give the writer. Crash safety is described in ``milnce.index.writer``;
searching in ``milnce.index.reader``, ranking in ``milnce.index.ranking``.
"""

from __future__ import annotations

from ..video import VIDEO_EXTENSIONS
from ..windows import WindowSettings
from .backends import open_index
from .build import build_index, find_videos, index_window, stored_window
from .clipsource import clip_output, clip_source, find_video, open_clip_source
from .errors import (
    IndexDamagedError,
    IndexFolderError,
    IndexLockedError,
    IndexMismatchError,
    IndexNotFoundError,
    IndexWriteError,
)
from .features import FeaturesMismatchError, index_features
from .filters import FilterError, NoVideoMatchesError, VideoFilter, collection_root, parse_when, require_matches
from .hybrid import DEFAULT_SPEECH_WEIGHT, check_speech_weight
from .ingest import file_hash
from .layout import DB_NAME
from .likeclip import clip_query
from .lock import acquire_lock, check_unlocked
from .migrate import MigrateReport, migrate
from .milvus_client import DEFAULT_COLLECTION, check_collection, is_milvus_uri
from .moments import MOMENT_MARGIN, iter_video_moments, moment_margin, video_moments
from .negatives import DEFAULT_NOT_WEIGHT, check_weight, split_query
from .opening import FileChangedError, OutsideRootsError, file_state, open_indexed_file, reach_state
from .ranking import cosine
from .reader import IndexReader
from .records import IndexReport, Moment, VideoRecord, VideoRow
from .screen import quantize_rows, window_scores
from .searchable import SearchableIndex
from .snapshot import Snapshot
from .source import recorded_weights
from .writer import Index

DEFAULT_SETTINGS = WindowSettings().to_dict()  # a new index's windows: the published weights' conventions

__all__ = [
    "Index",
    "IndexReader",
    "SearchableIndex",
    "Snapshot",
    "Moment",
    "VideoRecord",
    "VideoRow",
    "IndexReport",
    "IndexFolderError",
    "IndexNotFoundError",
    "IndexLockedError",
    "IndexMismatchError",
    "IndexWriteError",
    "IndexDamagedError",
    "build_index",
    "index_features",
    "index_window",
    "stored_window",
    "FeaturesMismatchError",
    "find_videos",
    "file_hash",
    "video_moments",
    "iter_video_moments",
    "moment_margin",
    "MOMENT_MARGIN",
    "quantize_rows",
    "acquire_lock",
    "check_unlocked",
    "VIDEO_EXTENSIONS",
    "DEFAULT_SETTINGS",
    "open_index", "clip_output", "clip_source", "find_video", "open_clip_source", "FilterError",
    "NoVideoMatchesError", "VideoFilter", "collection_root", "parse_when", "require_matches",
    "DEFAULT_SPEECH_WEIGHT", "check_speech_weight", "DB_NAME", "clip_query", "MigrateReport", "migrate",
    "DEFAULT_COLLECTION", "check_collection", "is_milvus_uri", "DEFAULT_NOT_WEIGHT", "check_weight", "split_query",
    "FileChangedError", "OutsideRootsError", "file_state", "open_indexed_file", "reach_state", "cosine",
    "window_scores", "recorded_weights",
]
