"""``milnce.train.data``: Training data."""

from __future__ import annotations

import pytest
import torch

from eval_fixtures import needs_webdataset
from milnce.errors import UsageError
from video_fixtures import MB, rss


def test_train_csv_huge_line_refused(tmp_path):
    from milnce.train.data import load_split

    data = tmp_path / "train.csv"
    data.write_bytes(b"video_path,start,end,text\n" + b"a" * (20 << 20))  # 20 MiB in one line
    before = rss()
    with pytest.raises(UsageError, match="train.csv: line 2 is longer than"):
        load_split(data)
    assert rss() - before < 200 * MB


def test_schedule_and_batches():
    from milnce.train.config import TrainConfig
    from milnce.train.data import StepBatchSampler
    from milnce.train.trainer import lr_at

    cfg = TrainConfig(data="x", lr=1e-3, warmup_steps=4, steps=20, schedule_steps=20)
    lrs = [lr_at(s, cfg) for s in range(20)]
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:])) and lrs[-1] < 1e-4
    one = list(StepBatchSampler(0, 3, 4, 2, 0, 1))
    two = [list(StepBatchSampler(0, 3, 2, 2, r, 2)) for r in range(2)]
    assert [a + b for a, b in zip(*two)] == one  # ranks split each global micro-batch in order
    assert list(StepBatchSampler(1, 3, 4, 2, 0, 1)) == one[2:]  # resume skips exactly


def test_training_samples_are_reproducible(synth):
    from milnce.text import Tokenizer, load_vocab
    from milnce.train.data import TrainClips
    from milnce.train.loaders import find_data
    from milnce.windows import WindowSettings

    split, val, meta = find_data(str(synth), None)
    assert val is not None and meta["hflip"] is False
    ds = TrainClips(split, Tokenizer(load_vocab(synth / "vocab.npy")), WindowSettings(fps=4, num_frames=8, size=32),
                    seed=3, decode_size=40, min_time=2.0, num_candidates=3, hflip=True)
    clip, ids, info = ds[7]
    assert clip.shape == (3, 8, 32, 32) and clip.dtype == torch.uint8 and ids.shape == (3, 16)
    assert info == {"bad": 0, "failed": 0, "notes": ""}
    again, ids2, _ = ds[7]
    assert torch.equal(clip, again) and torch.equal(ids, ids2)
    assert sorted(int(ds.order(0)[i]) for i in range(len(ds))) == list(range(len(ds)))


@needs_webdataset
def test_folder_samples_count_any_decoder_exception(tmp_path, monkeypatch):
    """The folder layout: a decoder that raises something other than VideoError (here the
    RecursionError of a hostile file) is a counted bad sample replaced by another, not a crash."""
    import milnce.video
    from milnce.text import Tokenizer
    from milnce.train import make_synthetic
    from milnce.train.data import TrainClips
    from milnce.train.loaders import find_data
    from milnce.windows import WindowSettings

    data = make_synthetic(tmp_path / "syn", videos=2, val_videos=0, seed=1, size=32, progress=False)
    split, _, _ = find_data(str(data), None)
    hostile = split.videos[0].path
    real = milnce.video.read_clip

    def read_clip(path, *a, **k):
        if str(path) == hostile:
            raise RecursionError("maximum recursion depth exceeded")
        return real(path, *a, **k)

    monkeypatch.setattr(milnce.video, "read_clip", read_clip)
    ds = TrainClips(split, Tokenizer.from_file(data / "vocab.npy"), WindowSettings(fps=4, num_frames=4, size=32),
                    seed=0, decode_size=32, min_time=1.0, num_candidates=1, hflip=False)
    infos = [ds[g][2] for g in range(len(ds))]
    assert all(i["failed"] == 0 for i in infos)
    notes = [n for i in infos for n in i["notes"].splitlines()]
    assert notes and all("RecursionError" in n for n in notes)
