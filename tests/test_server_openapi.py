"""The web API's schema does not change by accident: ``create_app(...).openapi()`` equals
``tests/data/openapi.json`` (``info.version`` aside); a deliberate API change rewrites that file and
says so in the changelog. And nothing a client of the earlier API relies on went away:
``tests/data/openapi-4071740.json`` (written from commit 4071740, before the structure work) is
contained in today's schema (every path, operation, parameter and field, with the same types;
additions only: the speech fields of search answers, the upload route)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")

from milnce.index import Index, IndexReader  # noqa: E402
from milnce.server import create_app  # noqa: E402
from milnce.windows import WindowSettings  # noqa: E402

SCHEMA = Path(__file__).parent / "data" / "openapi.json"
BASE = Path(__file__).parent / "data" / "openapi-4071740.json"


class _Windows:
    embeddings = np.ones((2, 512), np.float32)
    starts = np.array([0.0, 1.6])
    ends = starts + 3.2
    duration = 4.8


def _schema(tmp_path, model) -> dict:
    with Index.create_for(tmp_path / "ix", model.weights_id, WindowSettings.for_model(model)) as w:
        w.add_videos([("/x/a.mp4", _Windows(), 1, 1.0, "")])
    with IndexReader.open(tmp_path / "ix", model) as ix:
        spec = create_app(ix, model).openapi()
    spec["info"].pop("version")
    return json.loads(json.dumps(spec, sort_keys=True))


def test_openapi_schema_is_unchanged(tmp_path, model):
    want = json.loads(SCHEMA.read_text(encoding="utf-8"))
    want["info"].pop("version")
    assert _schema(tmp_path, model) == want


def _contained(old, new, where: str = "") -> list[str]:
    """Where ``old`` is not contained in ``new`` (dict keys kept with contained values; list items
    kept, dicts matched by their ``name``)."""
    if isinstance(old, dict):
        if not isinstance(new, dict):
            return [where]
        return [p for k, v in old.items() if k != "description"  # prose may grow
                for p in (_contained(v, new[k], f"{where}/{k}") if k in new else [f"{where}/{k}"])]
    if isinstance(old, list):
        if not isinstance(new, list):
            return [where]
        out = []
        for item in old:
            if isinstance(item, dict) and "name" in item:
                match = [n for n in new if isinstance(n, dict) and n.get("name") == item["name"]]
                out += _contained(item, match[0], f"{where}[{item['name']}]") if match else [f"{where}[{item['name']}]"]
            elif item not in new:
                out.append(f"{where}[{item!r}]")
        return out
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


def test_the_earlier_api_is_contained_in_todays(tmp_path, model):
    base = json.loads(BASE.read_text(encoding="utf-8"))
    base["info"].pop("version")
    assert _contained(base, _schema(tmp_path, model)) == []
