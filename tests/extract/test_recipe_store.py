"""``milnce.extract.recipe_store``: The consumers' file layout for recipe features, plus milnce's sidecar
manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from milnce.extract.recipe_store import RecipeLayout
from milnce.recipes import get_recipe


def written(tmp_path, recipe: str = "univl"):
    r = get_recipe(recipe)
    layout = RecipeLayout(r)
    layout.prepare(str(tmp_path))
    target = tmp_path / "a.b.npy"
    layout.write(str(target), {r.feature: np.random.default_rng(1).standard_normal((4, r.dim))}, {"settings": {}})
    return layout, target


def test_sidecar_records_size_and_sha256(tmp_path):
    layout, target = written(tmp_path)
    side = json.loads(Path(layout.sidecar(str(target))).read_text())
    data = target.read_bytes()
    assert side["npy_bytes"] == len(data) and side["npy_sha256"] == hashlib.sha256(data).hexdigest()
    assert layout.read_meta(str(target)) is not None and layout.verify(str(target)) is None


def test_a_flipped_byte_or_changed_value_fails_verify(tmp_path):
    layout, target = written(tmp_path)
    good = target.read_bytes()
    raw = bytearray(good)
    raw[200] ^= 0x01  # inside the data: finite, same shape, the cheap check passes
    target.write_bytes(bytes(raw))
    assert layout.read_meta(str(target)) is not None
    assert "SHA-256 differs" in (layout.verify(str(target)) or "")
    x = np.load(target)
    x[0, 0] = x[0, 1] if x[0, 0] != x[0, 1] else -x[0, 0]  # one value changed, written whole by numpy
    np.save(target, x)
    assert "SHA-256 differs" in (layout.verify(str(target)) or "")
    target.write_bytes(good + b"\0")  # a longer file: the header no longer matches its size
    assert layout.read_meta(str(target)) is None


def test_old_sidecar_without_checksum_is_unverifiable(tmp_path):
    layout, target = written(tmp_path)
    side = json.loads(Path(layout.sidecar(str(target))).read_text())
    del side["npy_sha256"], side["npy_bytes"]
    Path(layout.sidecar(str(target))).write_text(json.dumps(side))
    assert layout.read_meta(str(target)) is not None  # still done for a plain run or --check
    assert "no checksum" in (layout.verify(str(target)) or "")
