"""Feature recipes: the exact S3D features that downstream research code expects, in one word.

A recipe fixes decoding (``milnce.video.ffmpeg_exact``: the reference extractor's ``ffmpeg``
command line), windows (consecutive non-overlapping chunks, the last one zero-padded), the
feature, L2 normalisation, dtype and file layout (``milnce.extract.recipe_store``: a flat
``DIR/<video_id>.npy`` per video, ``video_id`` = the file stem). Sources:

* ``videoclip``: VideoCLIP / MMPT, fairseq ``examples/MMPT/scripts/video_feature_extractor``
  (``extract.py`` ``--type s3d``: fps 30, size 224, centre crop; ``videoreader.py``: ffmpeg
  ``fps`` -> ``scale`` -> ``crop``; 30-frame chunks; ``video_embedding`` L2-normalised, saved
  with ``--half_precision 1`` as float16 ``np.save(<video_id>.npy)``).
* ``univl``: UniVL, ArrowLuo/VideoFeatureExtractor (``extract.py`` ``--type s3dg``: fps 16,
  size 224, centre crop, 1024-d ``mixed_5c``, L2-normalised, float16 by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .errors import UsageError
from .windows import WindowSettings

__all__ = ["Recipe", "RECIPES", "get_recipe", "recipes_table", "check_conflicts"]


@dataclass(frozen=True)
class Recipe:
    """One consumer's feature extraction, exactly."""

    name: str
    consumer: str
    source: str
    fps: int
    size: int
    feature: str  # "video_embedding" (512) or "mixed_5c" (1024)
    dim: int
    dtype: str = "float16"
    normalize: bool = True

    @property
    def frames_per_chunk(self) -> int:
        """Frames per window: one second of video (``fps`` frames), as the extractors cut them."""
        return self.fps

    @cached_property
    def window(self) -> WindowSettings:
        """The windows: ``fps`` frames per chunk, one chunk per second, ffmpeg-exact decoding (one
        object per recipe)."""
        return WindowSettings(fps=float(self.fps), num_frames=self.fps, size=self.size, stride=self.fps,
                              crop="center", decoder="ffmpeg")

    def features(self) -> list[str]:
        """What ``extract`` computes for it (``mixed_5c`` only when the recipe keeps it)."""
        return ["video_embedding"] if self.feature == "video_embedding" else ["video_embedding", "mixed_5c"]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "fps": self.fps, "size": self.size, "frames_per_chunk": self.frames_per_chunk,
                "feature": self.feature, "dim": self.dim, "dtype": self.dtype, "normalize": self.normalize,
                "decoder": "ffmpeg", "pad": "zeros"}


RECIPES: dict[str, Recipe] = {
    "videoclip": Recipe("videoclip", "VideoCLIP / MMPT",
                        "fairseq examples/MMPT/scripts/video_feature_extractor (type s3d)",
                        fps=30, size=224, feature="video_embedding", dim=512),
    "univl": Recipe("univl", "UniVL", "ArrowLuo/VideoFeatureExtractor (type s3dg)",
                    fps=16, size=224, feature="mixed_5c", dim=1024),
}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; ``UsageError`` naming the known ones otherwise."""
    try:
        return RECIPES[name]
    except KeyError:
        raise UsageError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)} (or 'list')") from None


def recipes_table() -> str:
    """The recipes as a text table (``milnce recipes``)."""
    rows = [("recipe", "consumer", "decoding", "windows", "feature", "output")]
    for r in RECIPES.values():
        rows.append((r.name, r.consumer,
                     f"ffmpeg fps={r.fps}, scale short side {r.size} (long int(L*{r.size}/S)), centre crop {r.size}, rgb24",
                     f"{r.frames_per_chunk}-frame chunks (1 s), zero-padded",
                     f"{r.feature} ({r.dim})",
                     f"L2-normalised {r.dtype}, DIR/<video_id>.npy"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines += [f"{r.name}: {r.source}" for r in RECIPES.values()]
    return "\n".join(lines)


# Options a recipe fixes: option name -> the value that does not conflict (None: any given value conflicts).
_FIXED = ("fps", "num_frames", "size", "stride", "crop", "pad", "start", "end", "features")


def check_conflicts(recipe: Recipe, given: dict[str, Any]) -> None:
    """``UsageError`` naming the first explicit option (not None) that contradicts ``recipe``."""
    want: dict[str, Any] = {"fps": float(recipe.fps), "num_frames": recipe.frames_per_chunk, "size": recipe.size,
                            "stride": recipe.frames_per_chunk, "crop": "center", "pad": "zeros",
                            "start": None, "end": None, "features": [recipe.feature]}
    for name in _FIXED:
        v = given.get(name)
        if v is None:
            continue
        ok = want[name]
        if name == "fps":
            same = isinstance(v, (int, float)) and float(v) == ok
        elif name == "features":
            same = [f for f in v if f] == ok
        else:
            same = ok is not None and v == ok
        if not same:
            opt = "--" + name.replace("_", "-")
            fixed = ",".join(ok) if isinstance(ok, list) else ok
            raise UsageError(f"{opt} {v if not isinstance(v, list) else ','.join(v)} conflicts with --recipe "
                             f"{recipe.name}" + (f" (which fixes {opt} {fixed})" if fixed is not None else
                                                 " (which always takes whole videos)"))
