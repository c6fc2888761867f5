"""``milnce.eval.cache``: Per-video embedding cache."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from eval_fixtures import DAMAGE, damage, erofs_open, good_entry


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_eval_cache_entry_is_a_miss_with_a_log_line(tmp_path, caplog, kind):
    from milnce.eval import EmbeddingCache

    c = EmbeddingCache(tmp_path / "c")
    c.put("ab" * 32, good_entry())
    assert c.get("ab" * 32) is not None
    damage(kind, c._file("ab" * 32))
    with caplog.at_level(logging.WARNING, logger="milnce.eval"):
        assert c.get("ab" * 32) is None
    assert "recomputing" in caplog.text and c.damaged == 1
    bad = good_entry()
    bad["mixed_5c"][0, 0] = np.inf
    c.put("cd" * 32, bad)  # never stored
    assert not c._file("cd" * 32).exists()


def test_eval_cache_on_a_read_only_disk_goes_on(tmp_path, monkeypatch, caplog):
    from milnce.eval import EmbeddingCache

    erofs_open(monkeypatch, tmp_path / "c")
    c = EmbeddingCache(tmp_path / "c")
    with caplog.at_level(logging.WARNING, logger="milnce.eval"):
        c.put("ab" * 32, good_entry())
        c.put("cd" * 32, good_entry())
    assert caplog.text.count("cannot write") == 1 and c.get("ab" * 32) is None
