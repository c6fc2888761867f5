"""Window settings: how a video is cut into model clips. One home for their defaults and checks.

The defaults are the published weights' input conventions (``milnce.REGISTRY``); a model's own
conventions come from ``WindowSettings.for_model(model)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from .errors import UsageError

__all__ = ["WindowSettings", "CROPS", "PADS", "DECODERS", "check_pad", "DEFAULT_BATCH_CPU", "DEFAULT_BATCH_CUDA",
           "batch_default_text", "default_stride"]

CROPS = ("center", "square", "resize")
# "pyav": milnce's own frame sampler (milnce.video.decode); "ffmpeg": the ffmpeg command line's
# frames (milnce.video.ffmpeg_exact; crop "center" = the feature extractors' scale+crop,
# "square" = the evaluation loaders'; windows are consecutive chunks or explicit starts).
DECODERS = ("pyav", "ffmpeg")
PADS = ("repeat", "loop", "zeros")
MIN_FPS = 0.01
MAX_FPS = 1000.0
MAX_FRAMES = 1024
MAX_SIZE = 4096
MAX_STRIDE = 100_000
# Windows per model call when a command or ``run_jobs`` is given none: the one default of every
# command that embeds videos (extract, embed-video, index, localize, demo, eval) and of the library,
# applied by ``milnce.runoptions.resolve_run_options``. CPU: 8, measured against 4 with
# benchmarks/bench_index.py on a shared 2-core machine, runs interleaved: 16 x 112 px windows,
# median 1.19 vs 0.49 windows/s (8 ahead in 4 of 4 pairs); 32 x 224 px windows, median 0.105 vs
# 0.105 windows/s (8 ahead in 2 of 3 pairs): never slower, so 8.
DEFAULT_BATCH_CPU = 8
DEFAULT_BATCH_CUDA = 64


def batch_default_text() -> str:
    """The default batch size as the help texts state it."""
    return f"{DEFAULT_BATCH_CUDA} on CUDA, {DEFAULT_BATCH_CPU} on the CPU"


def default_stride(num_frames: int) -> int:
    """The stride when none is given: half the window (16 of 32 frames), at least 1."""
    return max(1, int(num_frames) // 2) if isinstance(num_frames, int) and not isinstance(num_frames, bool) else 16


def check_pad(pad: str) -> str:
    """``pad`` if it is one of ``PADS`` (what fills a window past the end of a video), else ``UsageError``."""
    if pad not in PADS:
        raise UsageError(f"pad must be one of {', '.join(PADS)}, got {pad!r}")
    return pad


@dataclass(frozen=True)
class WindowSettings:
    """``num_frames`` frames sampled at ``fps``, cropped to ``size`` px, a window every ``stride`` frames.

    ``stride`` 0 (the default) is half the window (``default_stride``: 16 of 32 frames), so that
    consecutive windows overlap and together cover the whole video. A stride longer than the
    window leaves gaps: ``for_model`` refuses it unless ``allow_gaps=True``."""

    fps: float = 10.0
    num_frames: int = 32
    size: int = 224
    stride: int = 0
    crop: str = "center"
    decoder: str = "pyav"

    def __post_init__(self) -> None:
        if self.stride == 0 and not isinstance(self.stride, bool):
            object.__setattr__(self, "stride", default_stride(self.num_frames))
        self.validate()

    def validate(self) -> WindowSettings:
        """Raise ``UsageError`` unless every value is finite and in range."""
        try:
            fps = float(self.fps)
        except (TypeError, ValueError):
            raise UsageError(f"fps must be a number, got {self.fps!r}") from None
        if not math.isfinite(fps) or not MIN_FPS <= fps <= MAX_FPS:
            raise UsageError(f"fps must be finite and in [{MIN_FPS:g}, {MAX_FPS:g}], got {self.fps!r}")
        for name, top in (("num_frames", MAX_FRAMES), ("size", MAX_SIZE), ("stride", MAX_STRIDE)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise UsageError(f"{name} must be a whole number in [1, {top}], got {value!r}")
        if self.crop not in CROPS:
            raise UsageError(f"crop must be one of {', '.join(CROPS)}, got {self.crop!r}")
        if self.decoder not in DECODERS:
            raise UsageError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if self.decoder == "ffmpeg" and self.crop == "resize":
            raise UsageError("the ffmpeg-exact decoder supports crop center or square, not resize")
        return self

    @classmethod
    def for_model(cls, model: Any = None, *, allow_gaps: bool | None = False, **overrides: Any) -> WindowSettings:
        """The model's input conventions (``model.info``; default: the published weights'),
        with ``overrides`` applied (``None`` values are ignored; the stride defaults to half the
        window). A stride longer than the window is refused (``UsageError``) unless ``allow_gaps``."""
        from .weights import DEFAULT_WEIGHTS, REGISTRY

        info = getattr(model, "info", None) or REGISTRY[DEFAULT_WEIGHTS]
        base = cls(fps=float(info.fps), num_frames=int(info.num_frames), size=int(info.size))
        out = base.with_(**overrides)
        return out if allow_gaps else out.check_coverage()

    def check_coverage(self) -> WindowSettings:
        """``UsageError`` when a window starts more than a window after the previous one: the
        frames between them would be in no window (a gap of ``(stride - num_frames) / fps`` s)."""
        if self.stride > self.num_frames:
            raise UsageError(
                f"stride {self.stride} frames is longer than the window ({self.num_frames} frames): "
                f"{(self.stride - self.num_frames) / self.fps:g} s after every window would be in none; "
                f"use a stride of at most {self.num_frames} (default: half the window, "
                f"{default_stride(self.num_frames)}), or pass --allow-gaps (allow_gaps=True) to skip them")
        return self

    @classmethod
    def from_values(cls, **values: Any) -> WindowSettings:
        """From loosely typed values (numpy scalars, whole floats for the counts), validated."""
        kept = dict(values)
        for key in ("num_frames", "size", "stride"):
            v = kept.get(key)
            if v is not None and not isinstance(v, (bool, int)) and hasattr(v, "__index__"):
                kept[key] = int(v.__index__())
        return cls().with_(**kept)

    def with_(self, **overrides: Any) -> WindowSettings:
        """A copy with the non-``None`` ``overrides`` applied (and validated)."""
        kept = {k: v for k, v in overrides.items() if v is not None}
        for key in ("num_frames", "size", "stride"):
            if key in kept and isinstance(kept[key], float) and kept[key].is_integer():
                kept[key] = int(kept[key])
        if kept.get("stride") == 0:
            raise UsageError(f"stride must be a whole number in [1, {MAX_STRIDE}], got 0")
        if "num_frames" in kept and "stride" not in kept and self.stride == default_stride(self.num_frames):
            kept["stride"] = 0  # the default stride follows the window
        return replace(self, **kept) if kept else self

    @property
    def duration(self) -> float:
        """Seconds covered by one window."""
        return self.num_frames / self.fps

    @property
    def hop(self) -> float:
        """Seconds between window starts."""
        return self.stride / self.fps

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["decoder"] == "pyav":  # the default is left out: settings stored before it existed stay equal
            del d["decoder"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WindowSettings:
        """From a stored dict (unknown keys are ignored)."""
        names = {"fps", "num_frames", "size", "stride", "crop", "decoder"}
        return cls(**{k: v for k, v in d.items() if k in names})
