"""The page and /healthz say which model answers: the published weights' name, or what a run is."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

from milnce.server.routes import _model_name
from milnce.weights import REGISTRY


def test_model_name_for_the_page():
    published = SimpleNamespace(info=REGISTRY["s3d_howto100m"])
    assert _model_name(published) == "s3d_howto100m"
    run = SimpleNamespace(info=replace(REGISTRY["s3d_howto100m"], name="run:fallback",
                                       description="trained with milnce train (/c/fallback)"))
    assert _model_name(run) == "run:fallback (trained with milnce train (/c/fallback))"
    assert _model_name(object()) == "unknown"


def test_page_shows_the_model():
    from pathlib import Path

    import milnce.server

    app_js = (Path(milnce.server.__file__).parent.parent / "static" / "app.js").read_text()
    assert "model ${h.model}" in app_js
