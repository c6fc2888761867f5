"""``milnce.eval.cache``: Per-video embedding cache."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import numpy as np
import pytest

import milnce.atomic


def _erofs_open(monkeypatch: pytest.MonkeyPatch, under: Path) -> None:
    """Every atomic write below ``under`` fails as on a read-only file system."""
    real = open

    def fake_open(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(file).startswith(str(under)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(milnce.atomic, "open", fake_open, raising=False)


# ----- gap 2: damaged eval cache entries ---------------------------------------------------------


def _good_entry() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"starts": np.arange(3.0), "video_embedding": rng.standard_normal((3, 512)).astype(np.float32),
            "mixed_5c": rng.standard_normal((3, 1024)).astype(np.float32), "duration": np.asarray(3.0)}


def _damage(kind: str, f: Path) -> None:
    if kind == "truncated":
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        f.write_bytes(os.urandom(300))
    elif kind == "zip garbage":
        f.write_bytes(b"PK\x03\x04" + os.urandom(300))
    elif kind == "object arrays":
        e = _good_entry()
        with open(f, "wb") as fh:
            np.savez(fh, **{**e, "video_embedding": np.array([object()] * 3, dtype=object)})
    elif kind == "nan":
        e = _good_entry()
        e["video_embedding"][1, 7] = np.nan
        with open(f, "wb") as fh:
            np.savez(fh, **e)
    elif kind == "shapes":
        e = _good_entry()
        e["video_embedding"] = e["video_embedding"][0]
        with open(f, "wb") as fh:
            np.savez(fh, **e)
    elif kind == "string starts":
        e = _good_entry()
        e["starts"] = np.array(["a", "b", "c"])
        with open(f, "wb") as fh:
            np.savez(fh, **e)


DAMAGE = ["truncated", "garbage", "zip garbage", "object arrays", "nan", "shapes", "string starts"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_eval_cache_entry_is_a_miss_with_a_log_line(tmp_path, caplog, kind):
    from milnce.eval import EmbeddingCache

    c = EmbeddingCache(tmp_path / "c")
    c.put("ab" * 32, _good_entry())
    assert c.get("ab" * 32) is not None
    _damage(kind, c._file("ab" * 32))
    with caplog.at_level(logging.WARNING, logger="milnce.eval"):
        assert c.get("ab" * 32) is None
    assert "recomputing" in caplog.text and c.damaged == 1
    bad = _good_entry()
    bad["mixed_5c"][0, 0] = np.inf
    c.put("cd" * 32, bad)  # never stored
    assert not c._file("cd" * 32).exists()


def test_eval_cache_on_a_read_only_disk_goes_on(tmp_path, monkeypatch, caplog):
    from milnce.eval import EmbeddingCache

    _erofs_open(monkeypatch, tmp_path / "c")
    c = EmbeddingCache(tmp_path / "c")
    with caplog.at_level(logging.WARNING, logger="milnce.eval"):
        c.put("ab" * 32, _good_entry())
        c.put("cd" * 32, _good_entry())
    assert caplog.text.count("cannot write") == 1 and c.get("ab" * 32) is None
