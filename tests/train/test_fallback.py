"""``milnce.train.fallback``: The fallback model."""

from __future__ import annotations

import pytest

import milnce
import milnce.weights
from milnce.train import fallback


def test_cache_key_follows_recipe_and_code_version(monkeypatch):
    base = fallback.recipe()
    assert fallback.recipe_key(base) == fallback.recipe_key(dict(base))
    assert fallback.recipe_key({**base, "steps": base["steps"] + 1}) != fallback.recipe_key(base)
    key = fallback.recipe_key(base)
    monkeypatch.setattr(milnce, "__version__", milnce.__version__ + ".post1")
    assert fallback.recipe_key(base) != key


def test_stale_fallback_is_rebuilt_and_removed(monkeypatch, tmp_path):
    calls = []

    def fake_build(tmp, settings, progress):
        calls.append(settings["steps"])
        (tmp / "run").mkdir(parents=True)
        return {"R@5": 50.0}

    monkeypatch.setattr(fallback, "_build", fake_build)
    old = fallback.fallback_model({**fallback.RECIPE, "steps": 1}, progress=False)
    assert old.built and fallback.fallback_model({**fallback.RECIPE, "steps": 1}, progress=False).built is False
    new = fallback.fallback_model({**fallback.RECIPE, "steps": 2}, progress=False)
    assert new.built and calls == [1, 2] and not old.root.exists() and new.root.is_dir()
    # a half-built folder (no fallback.json: an interrupted build) is not taken for a model
    (new.root / fallback.DONE_FILE).unlink()
    assert fallback.fallback_model({**fallback.RECIPE, "steps": 2}, progress=False).built


def test_recipe_env_must_name_known_settings(monkeypatch, capsys):
    monkeypatch.setenv(fallback.RECIPE_ENV, '{"stepz": 3}')
    with pytest.raises(milnce.UsageError, match="keys among"):
        fallback.recipe()
