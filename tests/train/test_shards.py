"""``milnce.train.shards``: Streamed training data."""

from __future__ import annotations

import pytest

from eval_fixtures import SHARD_FIXTURES, SHARD_WORDS, shard_after

pytest.importorskip("webdataset")


def test_shard_stream_counts_a_record_that_raises_and_goes_on(tmp_path):
    from milnce.text import Tokenizer
    from milnce.train.shards import ShardClips, ShardSet
    from milnce.windows import WindowSettings

    tar = shard_after(tmp_path / "s.tar", {"deep.json": b"[" * 100000 + b"]" * 100000, "deep.mp4": b"\x00" * 100})
    tok = Tokenizer(SHARD_WORDS)
    clips = ShardClips(ShardSet((str(tar),), str(tar)), tok, WindowSettings(fps=4, num_frames=4, size=32), seed=0,
                       decode_size=36, min_time=1.0, num_candidates=1, hflip=False, rank=0, world=1)
    got = [x for _, x in zip(range(4), iter(clips))]
    first = got[0][2]
    assert first["bad"] == 1 and "deep" in first["notes"] and "not JSON" in first["notes"]
    assert [g[2]["bad"] for g in got[1:]] == [0, 0, 0]
    # each clip is trained with its own subtitle line, never the repr of its .txt or another clip's
    texts = ["add salt", "stir the soup", "cut the onions", "serve"]
    assert [g[1].tolist() for g in got] == [tok([t]).tolist() for t in texts]
    assert all(g[0].shape == (3, 4, 32, 32) for g in got)


def test_clips_shorter_than_min_time_are_sampled_inside_the_clip():
    """A clip cut at one subtitle line (1-1.5 s) with --min-time 5: the window is taken inside the
    clip's video (padded past its end), never starting past its end (a bad sample before)."""
    from milnce.text import Tokenizer
    from milnce.train.shards import ShardClips, ShardSet
    from milnce.windows import WindowSettings

    tar = SHARD_FIXTURES / "clipped" / "00000.tar"
    clips = ShardClips(ShardSet((str(tar),), str(tar)), Tokenizer(SHARD_WORDS), WindowSettings(fps=4, num_frames=8, size=32),
                       seed=0, decode_size=36, min_time=5.0, num_candidates=1, hflip=False, rank=0, world=1)
    got = [x for _, x in zip(range(8), iter(clips))]  # two epochs of the 4 clips
    assert [g[2]["bad"] for g in got] == [0] * 8, [g[2]["notes"] for g in got]
