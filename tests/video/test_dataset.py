"""``milnce.video.dataset``: ``VideoClipDataset``."""

from __future__ import annotations

import gc
import warnings

import pytest
import torch

from milnce.video import VideoClipDataset
from video_fixtures import clip_indices

# ------------------------------------------------------------------------------ dataset


def test_dataset_reports_bad_file_and_goes_on(vids, bad):
    rows = [vids["short"], bad["text"], (vids["cfr10"], 1.0, 2.0), bad["missing"]]
    ds = VideoClipDataset(rows, num_frames=8, size=32, stride=8)
    with pytest.warns(RuntimeWarning) as rec:
        items = list(ds)
    assert sum("notes.mp4" in str(w.message) for w in rec) == 1
    good = [it for it in items if not it["error"]]
    errs = [it for it in items if it["error"]]
    assert [(it["index"], it["window"]) for it in good] == [(0, 0), (2, 0), (2, 1)]
    assert [it["index"] for it in errs] == [1, 3] and "notes.mp4" in errs[0]["error"]
    assert good[1]["start"] == pytest.approx(1.0) and clip_indices(good[1]["frames"]) == list(range(10, 18))
    assert [p for p, _ in ds.errors] == [str(bad["text"]), str(bad["missing"])]


def test_dataset_multi_worker_loader(vids, bad):
    rows = [vids["cfr10"], bad["text"], vids["short"], (vids["cfr10"], 2.0, None)]
    ds = VideoClipDataset(rows, num_frames=8, size=32, stride=8)
    # PyAV filter graphs of earlier tests are reference cycles: a forked worker that frees one waits
    # forever on the slice threads of the parent (not in the child). Free them before the fork.
    gc.collect()
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)
    seen, errors = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for batch in loader:
            assert batch["frames"].dtype == torch.uint8 and batch["frames"].shape[1:] == (3, 8, 32, 32)
            for i, w, e in zip(batch["index"].tolist(), batch["window"].tolist(), batch["error"]):
                (errors if e else seen).append((i, w))
    assert sorted(seen) == [(0, k) for k in range(5)] + [(2, 0)] + [(3, k) for k in range(3)]
    assert errors == [(1, -1)]
