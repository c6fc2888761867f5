"""``milnce.environment`` called directly: the report ``milnce info`` prints, and the state of a
cached file and of the environment's weights/vocabulary paths."""

from __future__ import annotations

import numpy as np

import milnce
from milnce.cache import cache_dir
from milnce.environment import cache_entry, env_file_status, environment_report, extras
from milnce.weights import REGISTRY


def test_report_keys_and_each_registry_model():
    report = environment_report()
    assert report["milnce"] == milnce.__version__ and report["cache"] == str(cache_dir())
    assert report["MILNCE_WEIGHTS"] is None and report["MILNCE_VOCAB"] is None  # unset (conftest)
    assert report["av"] == report["extras"]["av"] and set(report["weights"]) == set(REGISTRY)
    for entry in report["weights"].values():
        assert set(entry) == {"weights", "vocab", "inputs", "sources"}
        assert entry["weights"].startswith("not downloaded (expected ")


def test_extras_named_by_distribution():
    found = extras()
    assert "scikit-learn" in found and "sklearn" not in found and found["av"]  # av is a dependency


def test_cache_entry_states(tmp_path):
    f = tmp_path / "w.pth"
    assert cache_entry(f, 4, "http://x/w.pth") == "not downloaded (expected 4 bytes from http://x/w.pth)"
    f.write_bytes(b"abc")
    assert cache_entry(f, 4, "http://x/w.pth") == f"{f} (3 bytes, expected 4: not the published file)"


def test_env_file_status(tmp_path, checkpoint):
    assert env_file_status("weights", None) is None
    assert env_file_status("weights", "s3d_howto100m") == "s3d_howto100m (registry name: the cached files below)"
    assert env_file_status("vocab", str(tmp_path / "gone.npy")).endswith(": MISSING (no such file or folder)")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    assert "NOT USABLE: " in env_file_status("weights", str(bad))
    assert "verified: " in env_file_status("weights", str(checkpoint[0]))
    words = len(np.load(checkpoint[1], allow_pickle=False))
    assert env_file_status("vocab", str(checkpoint[1])).endswith(f"{words:,} words)")
