"""Thumbnails: ``grab_thumbnail`` (one frame as JPEG) and the small thread-safe LRU cache the app
keeps them (and query embeddings) in.

Frames are decoded with PyAV (seek, decode one frame, scale to 192 px wide) and encoded with
FFmpeg's ``mjpeg`` encoder (no PIL needed).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from fractions import Fraction
from typing import Any

THUMB_WIDTH = 192
THUMB_CACHE_ENTRIES = 512


class LRU:
    """A thread-safe least-recently-used cache."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Any) -> Any:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def grab_thumbnail(path: str, t: float, width: int = THUMB_WIDTH, quality: int = 4) -> bytes:
    """JPEG bytes of the frame shown at ``t`` seconds (the last frame if ``t`` is past the end).

    PyAV seeks to the key frame before ``t`` and decodes forward to the first frame at or after
    ``t``; the frame is scaled to ``width`` px (even height, aspect kept) and encoded by FFmpeg's
    ``mjpeg`` encoder at fixed quantiser ``quality`` (2 best .. 31 worst).
    """
    import av

    from ..video import frame_at

    chosen = frame_at(path, t)  # VideoError if unreadable
    w = max(16, min(width, chosen.width)) // 2 * 2
    h = max(2, round(chosen.height * w / chosen.width / 2) * 2)
    small = chosen.reformat(width=w, height=h, format="yuvj420p")
    enc = av.CodecContext.create("mjpeg", "w")
    enc.width, enc.height, enc.pix_fmt = w, h, "yuvj420p"
    enc.time_base = Fraction(1, 25)
    enc.qscale = True
    enc.qmin = enc.qmax = quality
    packets = enc.encode(small) + enc.encode(None)
    return b"".join(bytes(p) for p in packets)
