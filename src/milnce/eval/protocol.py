"""The public evaluation protocol: which windows each clip is embedded from.

Per clip ``[start, end]`` (seconds; MSR-VTT and HMDB-51 clips are whole videos,
``[0, duration]``): ``num_windows`` windows of ``num_frames`` frames at ``fps``, starting at
``linspace(start, max(start, end - num_frames / fps - 0.4), num_windows)``; each frame is the
centre square of the shorter side resized to ``size`` (``crop="square"``); frames past the
end of the video are zeros (``pad="zeros"``). Frames are decoded exactly as the reference loaders'
``ffmpeg`` command line gives them (``decoder="ffmpeg"``, ``milnce.video.ffmpeg_exact``: input seek
``-ss start -t T/fps+0.1``, ``fps``, square centre crop, ``scale``, zero-padded to ``T`` frames);
``decoder="pyav"`` uses milnce's own sampler instead (cosine ~0.99 to the reference; CrossTask's
default, ``DEFAULT_DECODER``, as no reference loader exists for it). The clip embedding is the mean
of its windows' embeddings (HMDB-51: the mean of their ``mixed_5c`` features). Captions are tokenised with
``max_words`` words (30 in the public evaluation loaders; the model's own text module uses 16).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np

from ..errors import UsageError
from ..windows import DECODERS, PADS, WindowSettings

__all__ = ["DEFAULT_NUM_WINDOWS", "DEFAULT_DECODER", "TIE_RULES", "EvalSettings", "window_starts"]

TIE_RULES = ("pessimistic", "average", "optimistic")
# Windows per clip: 4 for retrieval (the public evaluation scripts' default), 10 for HMDB-51
# and UCF-101 (milnce's choice: the probe sees whole videos; more windows cover them better).
DEFAULT_NUM_WINDOWS = {"youcook2": 4, "msrvtt": 4, "hmdb51": 10, "ucf101": 10}
# Frames: ffmpeg-exact where MIL-NCE's release has a loader to match (youcook_loader.py,
# msrvtt_loader.py, hmdb_loader.py; UCF-101 follows the HMDB-51 protocol). CrossTask has none
# (its windows are milnce's rule): the model's usual sampler.
DEFAULT_DECODER = {"crosstask": "pyav"}
MAX_WINDOWS = 1024
MAX_MAX_WORDS = 4096


@dataclass(frozen=True)
class EvalSettings:
    """Protocol settings (defaults: the public evaluation's)."""

    num_windows: int = 4
    num_frames: int = 32
    fps: float = 10.0
    size: int = 224
    max_words: int = 30
    tail: float = 0.4  # seconds kept free at the end of a clip by the window-start formula
    crop: str = "square"
    pad: str = "zeros"
    decoder: str = "ffmpeg"

    def __post_init__(self) -> None:
        for name, top in (("num_windows", MAX_WINDOWS), ("max_words", MAX_MAX_WORDS)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= top:
                raise UsageError(f"{name} must be a whole number in [1, {top}], got {v!r}")
        if not isinstance(self.tail, (int, float)) or not math.isfinite(self.tail) or self.tail < 0:
            raise UsageError(f"tail must be a finite number of seconds >= 0, got {self.tail!r}")
        if self.pad not in PADS:
            raise UsageError(f"pad must be one of {', '.join(PADS)}, got {self.pad!r}")
        if self.decoder not in DECODERS:
            raise UsageError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if self.decoder == "ffmpeg" and self.pad != "zeros":
            raise UsageError("the ffmpeg-exact decoder pads with black frames (pad zeros), as the reference loaders")
        _ = self.window  # validates fps, num_frames, size and crop

    @classmethod
    def for_benchmark(cls, name: str, **overrides: Any) -> EvalSettings:
        """The defaults of benchmark ``name`` with the non-``None`` ``overrides`` applied."""
        base: dict[str, Any] = {"num_windows": DEFAULT_NUM_WINDOWS.get(name, 4),
                                "decoder": DEFAULT_DECODER.get(name, "ffmpeg")}
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    @cached_property
    def window(self) -> WindowSettings:
        """The ``WindowSettings`` handed to the extraction pipeline (stride is unused: starts are
        explicit): one object per ``EvalSettings``, built (and validated) when it is made."""
        return WindowSettings(fps=float(self.fps), num_frames=self.num_frames, size=self.size,
                              stride=self.num_frames, crop=self.crop, decoder=self.decoder)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fps"] = float(d["fps"])
        return d

    def video_key(self) -> dict[str, Any]:
        """The settings that change video embeddings (``max_words`` does not; the decoding path does)."""
        d = self.to_dict()
        d.pop("max_words")
        return d


def window_starts(start: float, end: float, settings: EvalSettings) -> np.ndarray:
    """Window starts (float64 seconds) of the clip ``[start, end]`` under ``settings``."""
    last = max(start, end - settings.num_frames / settings.fps - settings.tail)
    return np.linspace(float(start), float(last), settings.num_windows, dtype=np.float64)
