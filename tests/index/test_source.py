"""``milnce.index.source``: Where an index's weights came from."""

from __future__ import annotations

from pathlib import Path


def test_registry_weights_are_recorded_by_name(checkpoint, monkeypatch):
    from milnce.api import _weights_source

    assert _weights_source(None, None, Path("/x"), None) == {"kind": "registry", "weights": "s3d_howto100m",
                                                             "vocab": None}
    monkeypatch.setenv("MILNCE_WEIGHTS", str(checkpoint[0]))
    assert _weights_source(None, None, checkpoint[0], checkpoint[1])["kind"] == "file"
