"""``milnce.cache``: The cache folder and its small locked JSON stores (below ``weights``, ``integrity``,
``download``)."""

from __future__ import annotations

import json
import os

from milnce.cache import JsonStore
from milnce.download import cache_dir

# ----------------------------------------------------------------------------- download()


def test_cache_dir_follows_milnce_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MILNCE_HOME", str(tmp_path / "a" / "b"))
    assert cache_dir() == tmp_path / "a" / "b"
    assert cache_dir().is_dir()


def test_json_store_is_lenient_and_bounded(tmp_path):
    store = JsonStore(tmp_path / "s.json", max_entries=2)
    assert store.read() == {}
    (tmp_path / "s.json").write_text("[not an object")
    assert store.read() == {}
    for k in "abc":
        store.put(k, {"v": k})
    assert list(store.read()) == ["b", "c"]


def test_json_outputs_stay_json(tmp_path):
    store = JsonStore(tmp_path / "c.json")
    store.put("k", {"a": 1})
    assert json.loads((tmp_path / "c.json").read_text()) == {"k": {"a": 1}}
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
