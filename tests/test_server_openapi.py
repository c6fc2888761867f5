"""The web API's schema does not change by accident: ``create_app(...).openapi()`` equals
``tests/data/openapi.json`` (written from commit 4071740, before the index reader/writer split;
``info.version`` aside). A deliberate API change rewrites the file and says so in the changelog."""

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


class _Windows:
    embeddings = np.ones((2, 512), np.float32)
    starts = np.array([0.0, 1.6])
    ends = starts + 3.2
    duration = 4.8


def test_openapi_schema_is_unchanged(tmp_path, model):
    with Index.create_for(tmp_path / "ix", model.weights_id, WindowSettings.for_model(model)) as w:
        w.add_videos([("/x/a.mp4", _Windows(), 1, 1.0, "")])
    with IndexReader.open(tmp_path / "ix", model) as ix:
        spec = create_app(ix, model).openapi()
    want = json.loads(SCHEMA.read_text(encoding="utf-8"))
    spec["info"].pop("version")
    want["info"].pop("version")
    assert json.loads(json.dumps(spec, sort_keys=True)) == want
