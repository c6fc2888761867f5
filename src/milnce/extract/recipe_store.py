"""The consumers' file layout for recipe features, plus milnce's sidecar manifest.

``DIR/<video_id>.npy``: one float16 array per video, ``n x dim`` L2-normalised rows, row ``i``
covering ``[i, i+1)`` seconds (``video_id`` = the video's file name without its suffix; the
consumers key by it, so two inputs with the same stem are refused). Nothing else at the top
level but ``milnce-recipe.json`` (the recipe, written once) and the failure lists.

Sidecar: ``DIR/.milnce/<video_id>.json`` per video (settings, features, weights fingerprint,
precision, the source file's path/size/mtime, rows, warnings), so resume, ``--check`` and
"same settings" work as for the default ``.npz`` format. The ``.npy`` is written first, the
sidecar second, each atomically (``milnce.atomic``): a video is done only when both exist and
agree. The consumers' loaders never look into the hidden folder.

Integrity: the sidecar records the ``.npy``'s size (``npy_bytes``) and SHA-256 (``npy_sha256``).
Every run checks the header against the file size and the recorded size (cheap); ``--verify-files``
reads the whole file back and compares its SHA-256, so one changed value is found and redone.
A sidecar written before checksums has none: ``--verify-files`` calls that file unverifiable and
redoes it (so that afterwards every file carries a checksum).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..atomic import atomic_write_bytes
from ..errors import UsageError
from ..recipes import Recipe
from ..video import NpyFileError, npy_header, read_npy
from .inputs import VideoInput
from .store import StoreError

__all__ = ["RecipeLayout", "extract_recipe", "video_id", "check_unique_ids", "read_sidecar", "MANIFEST_DIR",
           "RECIPE_FILE", "FORMAT"]

MANIFEST_DIR = ".milnce"
RECIPE_FILE = "milnce-recipe.json"
FORMAT = "milnce-recipe-features/1"


def video_id(path: str) -> str:
    """The consumers' key: the file name without its (last) suffix."""
    return os.path.splitext(os.path.basename(os.path.normpath(path)))[0]


def check_unique_ids(items: Sequence[VideoInput]) -> None:
    """``UsageError`` naming both inputs when two videos share a ``video_id``."""
    seen: dict[str, str] = {}
    for it in items:
        vid = video_id(it.path)
        if not vid:
            raise UsageError(f"{it.path}: no file name to use as the video id")
        if vid in seen:
            raise UsageError(f"two inputs have the same video id {vid!r} (the consumers key features by file "
                             f"stem): {seen[vid]} and {it.path}; rename one or extract them in separate runs")
        seen[vid] = it.path


MAX_SIDECAR = 1 << 20  # bytes: a sidecar is a few hundred; a bigger "sidecar" is not one


def read_sidecar(path: str) -> Any:
    """The parsed JSON of a sidecar (``OSError``/``ValueError`` when unreadable, too big or not JSON)."""
    with open(path, "rb") as f:
        blob = f.read(MAX_SIDECAR + 1)
    if len(blob) > MAX_SIDECAR:
        raise ValueError(f"{path}: over {MAX_SIDECAR} bytes, not a sidecar")
    return json.loads(blob.decode("utf-8"))


class RecipeLayout:
    """Where and how ``milnce.extract.extract`` writes a recipe's outputs (its ``layout=``)."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe

    def prepare(self, out_dir: str) -> None:
        """Create the sidecar folder and write ``milnce-recipe.json``."""
        try:
            os.makedirs(os.path.join(out_dir, MANIFEST_DIR), exist_ok=True)
            blob = json.dumps({"format": FORMAT, "recipe": self.recipe.to_dict()}, indent=2, sort_keys=True) + "\n"
            f = os.path.join(out_dir, RECIPE_FILE)
            if not os.path.isfile(f) or open(f, encoding="utf-8").read() != blob:
                atomic_write_bytes(f, blob.encode())
        except OSError as exc:
            raise StoreError(f"cannot write in {out_dir}: {exc.strerror or exc}") from exc

    def target(self, out_dir: str, item: VideoInput) -> str:
        return os.path.join(out_dir, video_id(item.path) + ".npy")

    @staticmethod
    def sidecar(target: str) -> str:
        d, name = os.path.split(target)
        return os.path.join(d, MANIFEST_DIR, os.path.splitext(name)[0] + ".json")

    def read_meta(self, target: str) -> dict[str, Any] | None:
        """The sidecar of ``target``, or None when either file is missing or they disagree."""
        try:
            meta = read_sidecar(self.sidecar(target))
            head = npy_header(target)  # the header against the file size: nothing allocated
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        if (not isinstance(meta, dict) or meta.get("format") != FORMAT or len(head.shape) != 2
                or meta.get("rows") != head.shape[0] or meta.get("npy_bytes", head.size) != head.size):
            return None
        return meta

    def verify(self, target: str) -> str | None:
        """``--verify-files``: the whole ``.npy`` read back and compared with the SHA-256 in its sidecar."""
        try:
            arr, _head, digest = read_npy(target)
        except NpyFileError as exc:
            return f"unreadable ({exc})"
        meta = self.read_meta(target) or {}
        if arr.ndim != 2 or arr.dtype != np.dtype(self.recipe.dtype):
            return f"not {self.recipe.dtype} rows (shape {arr.shape}, {arr.dtype})"
        if not np.isfinite(arr).all():
            return "non-finite values"
        want = meta.get("npy_sha256")
        if want is None:
            return "no checksum in its sidecar (written before milnce recorded them): cannot be verified"
        if want != digest:
            return "its SHA-256 differs from the one recorded when it was written (the file changed)"
        return None

    def rows(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """The recipe's feature rows: L2-normalised (in float32), then its dtype."""
        x = np.asarray(arrays[self.recipe.feature], np.float32)
        if self.recipe.normalize:
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # torch F.normalize's eps
        return x.astype(self.recipe.dtype)

    def write(self, target: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """``<video_id>.npy`` then its sidecar, each atomically."""
        rows = self.rows(arrays)
        buf = io.BytesIO()
        np.save(buf, rows, allow_pickle=False)
        data = buf.getvalue()
        side = {**meta, "format": FORMAT, "recipe": self.recipe.name, "rows": int(rows.shape[0]),
                "npy_bytes": len(data), "npy_sha256": hashlib.sha256(data).hexdigest()}
        try:
            atomic_write_bytes(target, data)
            atomic_write_bytes(self.sidecar(target), json.dumps(side, sort_keys=True).encode())
        except OSError as exc:
            raise StoreError(f"cannot write {target}: {exc.strerror or exc}") from exc


def extract_recipe(paths: Any, out_dir: str | os.PathLike[str], model: Any, recipe: Recipe, **kwargs: Any) -> Any:
    """``milnce.extract.extract`` under ``recipe``: its windows, feature and layout (two inputs
    with the same video id are refused before anything is written). ``kwargs``: the run options
    of ``extract`` (``batch_size``, ``workers``, ``shard``, ``overwrite``, ``progress``...)."""
    from .runner import as_inputs, extract

    inputs = as_inputs(paths)
    check_unique_ids(inputs)
    return extract(inputs, out_dir, model, recipe.window, features=recipe.features(), pad="zeros",
                   layout=RecipeLayout(recipe), **kwargs)
