"""The search service behind the web API: ``SearchService`` wraps one index (any
``milnce.index.SearchableIndex``: an ``IndexReader``, or another backend) and its model
(typed, no duck typing) and answers in plain dicts ready for JSON; the routers
(``milnce.server.routes``) only parse requests and call it. Errors are ``ApiError(status,
message)``, which the app turns into the one error shape.

One model call at a time (a lock: torch uses the cores itself); query embeddings are cached by
text; a failing approximate index falls back to exact search (and ``health`` says so); commits
of a concurrent ``milnce index`` are picked up at most every ``refresh_interval`` seconds.

Several indexes behind one server: one ``SearchService`` per index (the routers get theirs from
``service_for(request)``); pagination of searches goes into ``search`` (its ranking is fixed, so
an offset is a prefix difference).

Paths in JSON: ``path`` and ``name`` are text; a name that is not valid UTF-8 is shown with its
undecodable bytes as ``\\xNN`` and also given losslessly as ``path_b64`` (the raw bytes, base64),
present only for such names.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from dataclasses import asdict
from typing import Any, BinaryIO
from urllib.parse import quote

import numpy as np

from ..errors import MilnceError
from ..index import (
    DEFAULT_NOT_WEIGHT,
    FileChangedError,
    FilterError,
    IndexDamagedError,
    Moment,
    NoVideoMatchesError,
    OutsideRootsError,
    SearchableIndex,
    VideoFilter,
    VideoRecord,
    check_speech_weight,
    cosine,
    file_state,
    open_indexed_file,
    reach_state,
    split_query,
    window_scores,
)
from ..plural import plural
from ..protocols import Encoder
from ..timespec import TimeSpecError, parse_like_id
from .files import FILE_CHANGED, MIME_TYPES, PLAYABLE
from .thumbs import LRU

__all__ = ["SearchService", "ApiError", "json_path", "parse_like", "QUERY_CACHE_ENTRIES"]

log = logging.getLogger("milnce.server")

QUERY_CACHE_ENTRIES = 64


class ApiError(Exception):
    """An answer other than 200: ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def json_path(path: str) -> dict[str, str]:
    """``{"path": text}`` (+ ``"path_b64"``: the raw bytes, when the name is not valid UTF-8)."""
    try:
        path.encode("utf-8")
        return {"path": path}
    except UnicodeEncodeError:
        raw = os.fsencode(path)
        return {"path": raw.decode("utf-8", "backslashreplace"), "path_b64": base64.b64encode(raw).decode("ascii")}


def _text(s: str) -> str:
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def parse_like(value: str) -> tuple[int, float] | None:
    """``"ID"`` or ``"ID@SECONDS"`` (ASCII digits) -> ``(video_id, seconds)``; None if malformed
    (``milnce.timespec.parse_like_id`` says why)."""
    try:
        return parse_like_id(value)
    except TimeSpecError:
        return None


class SearchService:
    """Searches, curves, listings and checked file access over one index (thread-safe)."""

    def __init__(self, index: SearchableIndex, model: Encoder, *, refresh_interval: float = 5.0,
                 query_cache: int = QUERY_CACHE_ENTRIES) -> None:
        self.index = index
        self.model = model
        self.refresh_interval = refresh_interval
        self.model_lock = threading.Lock()
        self.queries = LRU(query_cache)  # text -> embedding (the curve after a search is free)
        self.hash_verdicts: dict[Any, bool] = {}
        self._refreshed = time.monotonic()
        self._ann_failed: tuple[Any, str] | None = None
        self.videos_count: int | None = self._count_videos()
        self.name = os.path.basename(os.path.normpath(index.directory))  # set by IndexSet
        self.qualified = False  # several indexes: URLs and like keys name the index

    # -- state --------------------------------------------------------------------------------

    def _count_videos(self) -> int | None:
        try:
            return self.index.num_videos
        except Exception:  # noqa: BLE001 - healthz must not fail on a broken listing
            return None

    def maybe_refresh(self) -> None:
        """Pick up commits of a concurrent ``milnce index`` (call with ``model_lock`` held)."""
        if self.refresh_interval <= 0 or time.monotonic() - self._refreshed < self.refresh_interval:
            return
        self._refreshed = time.monotonic()
        if self.index.refresh():
            self.videos_count = self._count_videos()

    def roots(self) -> tuple[list[str], str | None]:
        """The roots files are served from, and a note when they were guessed
        (``milnce.index.roots.serving_roots``, once per committed state)."""
        return self.index.serving_roots()

    def _ann_key(self) -> Any:
        info = self.index.meta.get("ann")
        return info.get("file") if isinstance(info, dict) else None

    # -- records ------------------------------------------------------------------------------

    def record(self, video_id: int) -> VideoRecord:
        try:
            return self.index.video(video_id)
        except KeyError:
            raise ApiError(404, f"no video with id {video_id} in the index") from None

    def urls(self, video_id: int, path: str, t: float | None = None) -> dict[str, Any]:
        ext = os.path.splitext(path)[1].lower()
        name = os.path.basename(path)
        q = f"index={quote(self.name, safe='')}" if self.qualified else ""
        out: dict[str, Any] = {"name": _text(name), "file_url": f"/api/videos/{video_id}/file" + (f"?{q}" if q else ""),
                               "mime": MIME_TYPES.get(ext, "application/octet-stream"), "playable": ext in PLAYABLE,
                               "index": self.name, "like_prefix": f"{self.name}:" if self.qualified else ""}
        if t is not None:
            out["thumbnail_url"] = f"/api/videos/{video_id}/thumbnail?t={t:.2f}" + (f"&{q}" if q else "")
        return out

    def video_json(self, rec: VideoRecord) -> dict[str, Any]:
        d = asdict(rec)
        d.update(json_path(rec.path))
        # the serving rule (inside the roots, no link followed out of them), not a plain stat
        state = reach_state(rec.path, rec.size, rec.mtime, self.roots()[0], self.index.row(rec.id).hash or None,
                            self.hash_verdicts)
        d["exists"] = state in ("ok", "changed")
        d["file_state"] = state
        d.update(self.urls(rec.id, rec.path, min(1.0, float(rec.duration or 0) / 2)))
        return d

    def videos(self, offset: int, limit: int) -> dict[str, Any]:
        recs = self.index.videos()
        return {"total": len(recs), "offset": offset, "videos": [self.video_json(r) for r in recs[offset:offset + limit]]}

    def open_file(self, rec: VideoRecord) -> tuple[BinaryIO, os.stat_result]:
        """The indexed file, opened inside the collection roots, with its fstat: 404 when moved or
        deleted, 403 outside the roots, 409 when the path now holds another file."""
        roots, note = self.roots()
        try:
            return open_indexed_file(rec.path, rec.size, rec.mtime, self.index.row(rec.id).hash or None,
                                     self.hash_verdicts, roots=roots)
        except FileNotFoundError:
            raise ApiError(404, f"file missing: {_text(rec.path)} was moved or deleted since it was indexed") from None
        except OutsideRootsError as exc:
            raise ApiError(403, f"not served: {exc}" + (f" ({note})" if note else "")) from None
        except FileChangedError as exc:
            raise ApiError(409, f"{FILE_CHANGED} ({_text(str(exc))})") from None
        except OSError as exc:
            raise ApiError(404, f"file missing: {_text(rec.path)} could not be opened ({exc.strerror or exc})") from None

    # -- searching ----------------------------------------------------------------------------

    def _search_embedding(self, emb: np.ndarray, k: int, merge: bool, by_video: bool,
                          exclude: list[int], **opts: Any) -> tuple[list[Moment], str | None]:
        """Search one embedding (``opts``: ``neg``, ``not_weight``, ``video_filter``, ``offset`` of
        ``SearchableIndex.search_embeddings``); a failing approximate index falls back to exact search."""
        exact = self._ann_failed is not None and self._ann_failed[0] == self._ann_key()
        try:
            return self.index.search_embeddings(emb[None], k, merge=merge, by_video=by_video, exact=exact,
                                                exclude_videos=exclude, **opts)[0], None
        except MilnceError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged ANN file (faiss RuntimeError, ...)
            if exact:
                raise
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            log.warning("approximate search failed (%s); searching exactly", reason)
            found = self.index.search_embeddings(emb[None], k, merge=merge, by_video=by_video, exact=True,
                                                 exclude_videos=exclude, **opts)[0]
            self._ann_failed = (self._ann_key(), reason)
            return found, "The approximate index is damaged; searched exactly (rebuild it with 'milnce index --ann')."

    def text_embedding(self, text: str) -> np.ndarray:
        """The query's embedding (cached by text). Call with ``model_lock`` held."""
        emb = self.queries.get(text)
        if emb is None:
            problem = self.query_problem(text)
            if problem is not None:
                raise ApiError(422, f"cannot search for {text!r}: {problem}")
            emb = np.asarray(self.model.encode_text([text]).detach().cpu().numpy()[0], dtype=np.float32)
            self.queries.put(text, emb)
        return emb

    def query_problem(self, text: str) -> str | None:
        """Why the words cannot be searched (empty, no known word), or None."""
        return self.model.tokenizer.query_problem(text)

    def like_source(self, like: str) -> tuple[int, np.ndarray, float, float]:
        """``ID@SECONDS`` -> (video id, the stored embedding of its window, window start, end): the
        window whose start is nearest to the time."""
        try:
            vid, t = parse_like_id(like)
        except TimeSpecError as exc:
            raise ApiError(422, str(exc)) from None
        self.record(vid)
        starts, ends, vecs = self.index.windows(vid)
        if len(starts) == 0:
            raise ApiError(422, f"like: video {vid} has no windows in the index")
        i = int(np.argmin(np.abs(np.asarray(starts, dtype=np.float64) - t)))
        return vid, np.asarray(vecs[i], dtype=np.float32), float(starts[i]), float(ends[i])

    def moments_json(self, results: list[Moment]) -> list[dict[str, Any]]:
        states: dict[int, str] = {}
        out = []
        for m in results:
            d = m.to_dict()
            d.update(json_path(m.path))
            if m.video_id not in states:
                try:
                    rec = self.index.video(m.video_id)
                    states[m.video_id] = file_state(rec.path, rec.size, rec.mtime)
                except KeyError:
                    states[m.video_id] = "missing"
            d["file_state"] = states[m.video_id]
            d["score"] = round(float(d["score"]), 5)
            for key, digits in (("cosine", 4), ("percentile", 2), ("visual_score", 5), ("speech_score", 5)):
                v = d.get(key)
                d[key] = round(float(v), digits) if v is not None and np.isfinite(v) else None
            d.update(self.urls(m.video_id, m.path, (float(m.start) + float(m.end)) / 2))
            out.append(d)
        return out

    def search_mode(self, mode: str | None) -> tuple[str, str]:
        """The scoring mode of a text search here and its note (``Index.search_mode``; an index
        type without transcripts: visual only)."""
        how = getattr(self.index, "search_mode", None)
        if how is None:
            return ("speech", "speech: this index type has no transcripts, so nothing can match") if mode == "speech" \
                else ("visual", "visual only: this index type has no transcripts")
        try:
            return tuple(how(mode))  # type: ignore[return-value]
        except MilnceError as exc:
            raise ApiError(422, str(exc)) from None

    def search(self, text: str, like: str, k: int, merge: bool, by_video: bool, *, offset: int = 0,
               video_filter: VideoFilter | None = None, negatives: list[str] | None = None,
               not_weight: float = DEFAULT_NOT_WEIGHT, mode: str | None = None,
               speech_weight: float | None = None) -> dict[str, Any]:
        """Results ``offset .. offset + k - 1`` for words ``text`` (``-term`` / ``-"two words"``
        excluded: ``milnce.index.negatives.split_query``; more in ``negatives``) or like the window
        ``like`` names (``ID@SECONDS``), best first, among the videos ``video_filter`` lets through.
        ``mode`` (visual, speech, hybrid; None: hybrid where the index has transcripts) and
        ``speech_weight``: ``milnce.index.hybrid``; a ``like`` search is visual."""
        tok = self.model.tokenizer
        negs = list(negatives or [])
        if text:
            try:
                text, more_negs = split_query(text)
            except MilnceError as exc:
                raise ApiError(422, str(exc)) from None
            negs += more_negs
        words = tok.words(text) if text else []
        unknown = tok.unknown_words(text) if text else []
        notes: list[str] = []
        results: list[Moment] = []
        source = None
        opts: dict[str, Any] = {"video_filter": video_filter, "offset": offset, "not_weight": not_weight}
        used, mode_note = ("visual", "visual: query by example") if like else self.search_mode(mode)
        weight = check_speech_weight(speech_weight) if used == "hybrid" else None
        speech = {} if used == "visual" else {"mode": used, "speech_weight": weight}
        try:
            if like:
                with self.model_lock:
                    self.maybe_refresh()
                    vid, emb, w0, w1 = self.like_source(like)
                    opts["neg"] = self.negative_embeddings(negs)
                    results, note = self._search_embedding(emb, k, merge, by_video, exclude=[vid], **opts)
                source = {"video_id": vid, "start": w0, "end": w1, **self.urls(vid, self.index.video(vid).path)}
                notes += [note] if note else []
            elif not text:
                notes.append("Empty query: type a few words describing what happens in the video.")
            elif not words and used != "visual" and text.strip():
                with self.model_lock:  # words the model does not know may still have been said
                    self.maybe_refresh()
                    results, note = self._search_embedding(np.zeros(self.index.dim, np.float32), k, merge, by_video,
                                                           exclude=[], speech_text=[text], **speech, **opts)
            elif not words:
                notes.append("None of the words are in the model's vocabulary, so there is nothing to search for"
                             + (f" (unknown: {', '.join(unknown[:10])})." if unknown else "."))
            else:
                with self.model_lock:
                    self.maybe_refresh()
                    emb = self.text_embedding(text)
                    opts["neg"] = self.negative_embeddings(negs)
                    if speech:
                        opts.update(speech_text=[text], **speech)
                    results, note = self._search_embedding(emb, k, merge, by_video, exclude=[], **opts)
                if unknown:
                    notes.append(f"Ignored words not in the vocabulary: {', '.join(unknown[:10])}.")
                notes += [note] if note else []
                if not results and len(self.index) == 0:
                    notes.append("No moments found: the index is empty.")
        except NoVideoMatchesError as exc:
            notes.append(f"{str(exc)[:1].upper()}{str(exc)[1:]}.")
        except FilterError as exc:
            raise ApiError(422, str(exc)) from None
        if video_filter is not None and (text or like) and len(results) < k and not notes:
            shown = offset + len(results)
            notes.append(f"Only {plural(shown, 'result')} {'passes' if shown == 1 else 'pass'} the filter "
                         f"({video_filter.describe()}).")
        if used != "visual" or mode is not None:
            notes.append(f"Mode: {mode_note}.")
        return {"words": words, "unknown_words": unknown, "like": source, "results": self.moments_json(results),
                "mode": used, "speech_weight": weight,
                "not": negs, "not_weight": not_weight if negs else None, "offset": offset,
                "filter": None if video_filter is None else video_filter.describe(),
                "message": " ".join(notes) or None}

    def search_vector(self, emb: np.ndarray, k: int, merge: bool, by_video: bool, *, offset: int = 0,
                      video_filter: VideoFilter | None = None, negatives: list[str] | None = None,
                      not_weight: float = DEFAULT_NOT_WEIGHT, mode: str | None = None,
                      speech_weight: float | None = None) -> dict[str, Any]:
        """Results for a query embedding (another index's window: a merged ``like`` search, visual:
        ``mode`` and ``speech_weight`` are not used)."""
        notes: list[str] = []
        results: list[Moment] = []
        try:
            with self.model_lock:
                self.maybe_refresh()
                neg = self.negative_embeddings(list(negatives or []))
                results, note = self._search_embedding(emb, k, merge, by_video, exclude=[], neg=neg,
                                                       not_weight=not_weight, video_filter=video_filter, offset=offset)
            notes += [note] if note else []
        except NoVideoMatchesError as exc:
            notes.append(f"{self.name}: {exc}.")
        except FilterError as exc:
            raise ApiError(422, str(exc)) from None
        return {"results": self.moments_json(results), "message": " ".join(notes) or None}

    def negative_embeddings(self, terms: list[str]) -> np.ndarray | None:
        """The negative terms' embeddings (K x 512) or None; 422 for a term with no known word.
        Call with ``model_lock`` held."""
        if not terms:
            return None
        return np.stack([self.text_embedding(t) for t in terms])

    def curve(self, video_id: int, text: str, like: str, like_emb: np.ndarray | None = None,
              not_weight: float = DEFAULT_NOT_WEIGHT) -> dict[str, Any]:
        """A query's score over every window of one video (dot products and cosines); with
        ``-term``s in ``text`` the combined score the search ranks by (``cosine``: the positive
        query's). ``like_emb``: the ``like`` window's embedding, when it is another index's."""
        rec = self.record(video_id)
        if bool(text) == bool(like):
            raise ApiError(422, "give either q (words) or like (VIDEO_ID@SECONDS)")
        neg = None
        with self.model_lock:
            if like:
                emb = like_emb if like_emb is not None else self.like_source(like)[1]
            else:
                try:
                    text, negs = split_query(text)
                except MilnceError as exc:
                    raise ApiError(422, str(exc)) from None
                problem = self.query_problem(text)
                if problem is not None:
                    return {"video_id": video_id, "query": text, "like": None, "starts": [], "ends": [], "scores": [],
                            "cosine": [], "duration": rec.duration, "message": f"nothing to score: {problem}"}
                emb = self.text_embedding(text)
                neg = self.negative_embeddings(negs)
        starts, ends, vecs = self.index.windows(video_id)
        pos = np.asarray(vecs, dtype=np.float32) @ emb
        scores = window_scores(vecs, emb, neg, not_weight) if neg is not None else pos
        return {"video_id": video_id, "query": text, "like": like or None, "duration": rec.duration,
                "starts": np.round(np.asarray(starts, dtype=np.float64), 3).tolist(),
                "ends": np.round(np.asarray(ends, dtype=np.float64), 3).tolist(),
                "scores": np.round(scores.astype(np.float64), 4).tolist(),
                "cosine": np.round(cosine(pos, emb, vecs), 4).tolist(), "message": None}

    # -- health -------------------------------------------------------------------------------

    def ann_health(self) -> tuple[dict[str, Any], bool]:
        """(the ANN state, healthy?)."""
        info = self.index.ann_status()
        bad = str(info.get("state", "")).lower() in ("damaged", "missing")
        failed = self._ann_failed
        if failed is not None and failed[0] == self._ann_key():
            info["search_fallback"] = failed[1]
            bad = True
        return info, not bad

    def check_store(self) -> str | None:
        """Why the vector store cannot be searched now (truncated under us), or None."""
        try:
            self.index.check_files()
        except IndexDamagedError as exc:
            return str(exc)
        return None
