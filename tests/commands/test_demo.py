"""``milnce.commands.demo``: ``milnce demo``."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("installed", [True, False])
def test_serve_hint_only_when_the_extra_is_missing(installed, monkeypatch, capsys):
    """Item 8: the demo said "needs pip install 'milnce[serve]'" even with it installed."""
    import argparse
    import importlib.util

    import milnce.commands.demo as demo_cmd
    from milnce.demo import Demo

    real = importlib.util.find_spec
    if installed and (real("fastapi") is None or real("uvicorn") is None):
        pytest.skip("the serve extra is not installed here")
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (real(name, *a) if installed else None) if name in ("fastapi", "uvicorn")
                        else real(name, *a))
    demo = Demo(None, "m", "m", [], {}, ["a red square moves left"], {})
    demo_cmd._print_next(argparse.Namespace(weights=None, vocab=None), "/tmp/ix", demo)
    out = capsys.readouterr().out
    assert "milnce serve --index /tmp/ix, then open" in out or not installed
    assert ("needs pip install 'milnce[serve]'" in out) is (not installed)
    assert "milnce search --index /tmp/ix 'a red square moves left'" in out and "--weights" not in out
