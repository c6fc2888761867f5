"""``milnce migrate FOLDER --to FILE.db``: killed mid-way (SIGKILL after a few batches) and run
again, the collection holds every window of the folder once, bit for bit; a third run copies
nothing; a video removed from the folder is removed from the collection."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from milvus_fixtures import require_milvus_lite, synthetic_videos

require_milvus_lite()

from milnce.index import Index  # noqa: E402
from milnce.index.milvus_store import MilvusIndex  # noqa: E402
from milnce.windows import WindowSettings  # noqa: E402

SRC = str(Path(__file__).resolve().parent.parent / "src")


def _run(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "milnce", "migrate", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def _folder(tmp_path: Path, n: int) -> str:
    d = str(tmp_path / "folder")
    with Index.create_for(d, "test-weights", WindowSettings()) as ix:
        items = synthetic_videos(n, seed=3)
        for a in range(0, n, 20):
            ix.add_videos(items[a:a + 20])
    return d


@pytest.mark.slow  # a subprocess killed mid-migration and a rerun: the whole suite runs it
def test_kill_and_rerun_leaves_no_duplicate_and_no_missing_window(tmp_path: Path) -> None:
    folder = _folder(tmp_path, 90)
    db = str(tmp_path / "moved.db")
    p = _run([folder, "--to", db, "--batch-windows", "25"])
    seen = 0
    assert p.stdout is not None
    for line in p.stdout:
        if line.startswith("migrated "):
            seen += 1
            if seen == 3:  # three batches committed, the fourth under way
                p.send_signal(signal.SIGKILL)
                break
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL, p.stderr.read() if p.stderr else ""

    p = _run([folder, "--to", db, "--batch-windows", "25", "--json"])
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    rep = json.loads(out)
    assert rep["skipped"] >= 3 and rep["copied"] + rep["skipped"] == 90 and rep["verified_videos"] == 64

    with Index.open(folder) as src, MilvusIndex.open(db) as dst:
        keys = dst.window_keys()
        assert len(keys) == len(set(keys)) == src.num_live == dst.count_windows() == dst.num_live
        assert sorted(r.id for r in dst.rows()) == sorted(r.id for r in src.rows())
        for r in src.rows():  # every window, bit for bit
            for a, b in zip(src.windows(r.id), dst.windows(r.id)):
                np.testing.assert_array_equal(a, b)
            assert dst.row(r.id)._replace(row_start=0) == r._replace(row_start=0)
        assert dst.meta["settings"] == src.settings and dst.weights_id == src.weights_id

    p = _run([folder, "--to", db, "--json"])  # idempotent: nothing left to copy
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert json.loads(out)["copied"] == 0

    with Index.open(folder, readonly=False) as src:
        src.remove_videos([7])
    p = _run([folder, "--to", db, "--json"])
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert json.loads(out)["removed"] == 1
    with MilvusIndex.open(db) as dst:
        assert not dst.has_row(7) and dst.count_windows() == dst.num_live


@pytest.mark.slow
def test_migrate_refuses_a_collection_of_other_weights(tmp_path: Path) -> None:
    folder = _folder(tmp_path, 3)
    db = str(tmp_path / "other.db")
    MilvusIndex.create_for(db, "other-weights", WindowSettings()).close()
    p = _run([folder, "--to", db])
    out, err = p.communicate(timeout=120)
    assert p.returncode != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "other weights" in lines[0] and "Traceback" not in err
