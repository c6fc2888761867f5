"""Training on shards written by video2dataset 1.3.0 itself (tests/data/video2dataset, made by its
make_fixtures.py): every record kind's captions and times; caption texts that are dict literals;
records whose decoding raises (a deeply nested KEY.json) are counted bad samples, not a crash."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from milnce.cli import main

pytest.importorskip("webdataset")

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "video2dataset"
WORDS = ["add", "salt", "stir", "the", "soup", "cut", "onions", "serve", "a", "test", "pattern", "colour", "bars"]


def _records(tar: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar) as tf:
        for m in tf.getmembers():
            key, ext = m.name.split(".", 1)
            out.setdefault(key, {"__key__": key.encode()})[ext] = tf.extractfile(m).read()  # type: ignore[union-attr]
    return out


def _captions(kind: str) -> dict[str, list]:
    from milnce.train.shards import parse_captions

    return {k: parse_captions(r, 5.0) for k, r in _records(FIXTURES / kind / "00000.tar").items()}


def test_whole_video_records_read_the_youtube_subtitles():
    assert _captions("default") == {
        "00000000": [(0.0, 1.0, "add salt"), (1.0, 2.5, "stir the soup")],
        "00000001": [(0.5, 2.0, "cut the onions"), (2.0, 3.0, "serve")],
    }


def test_clipped_records_read_their_own_subtitles_in_clip_time():
    # captions_are_subtitles: one clip per subtitle line; the first clip of a video also carries the
    # whole video's subtitles (in the video's time), later clips an empty yt_meta_dict, and every
    # KEY.txt is the repr "{'en': [...]}": none of those may become a caption
    recs = _records(FIXTURES / "clipped" / "00000.tar")
    assert recs["00000000_00001"]["txt"] == b"{'en': ['stir the', 'soup']}"
    assert json.loads(recs["00000000_00001"]["json"])["yt_meta_dict"] == {}
    assert _captions("clipped") == {
        "00000000_00000": [(0.0, 1.0, "add salt")],  # clip 0..1 s of vidA
        "00000000_00001": [(0.0, 1.5, "stir the soup")],  # clip 1..2.5 s
        "00000001_00000": [(0.0, 1.5, "cut the onions")],  # clip 0.5..2 s of vidB
        "00000001_00001": [(0.0, 1.0, "serve")],  # clip 2..3 s
    }


def test_caption_col_records_read_the_caption_text():
    assert _captions("caption_col") == {"00000000": [(0.0, 5.0, "a test pattern")],
                                        "00000001": [(0.0, 5.0, "colour bars")]}


def test_clip_subtitles_are_cut_to_the_clip():
    from milnce.train.shards import BadRecord, parse_captions

    meta = {"yt_meta_dict": {}, "clips": [["00:00:10.000", "00:00:14.000"]], "clip_subtitles": [
        {"start": "00:00:09.000", "end": "00:00:11.000", "lines": {"de": ["eins"], "en": ["one"]}},
        {"start": "00:00:13.500", "end": "00:00:20.000", "lines": {"de": ["zwei"]}}]}
    assert parse_captions({"json": json.dumps(meta).encode()}, 5.0) == [(0.0, 1.0, "one"), (3.5, 4.0, "zwei")]
    # a clipped record without clip_subtitles: the video's subtitles, moved into the clip
    meta = {"clips": [[10, 14]], "yt_meta_dict": {"subtitles": {"en": [
        {"start": "00:00:01.000", "end": "00:00:02.000", "lines": ["before"]},
        {"start": "00:00:12.000", "end": "00:00:13.000", "lines": ["inside"]}]}}}
    assert parse_captions({"json": json.dumps(meta).encode()}, 5.0) == [(2.0, 3.0, "inside")]
    with pytest.raises(BadRecord, match="clips must be one"):
        parse_captions({"json": json.dumps({"clips": "x", "clip_subtitles": []}).encode()}, 5.0)
    with pytest.raises(BadRecord, match="clip ends"):
        parse_captions({"json": json.dumps({"clips": [[5, 2]], "clip_subtitles": []}).encode()}, 5.0)


@pytest.mark.parametrize("text,caption", [
    ("{'en': ['add salt']}", "add salt"),
    ('{"en": ["stir the", "soup"]}', "stir the soup"),
    ("{'de': ['salz'], 'en': ['salt']}", "salt"),
    ("{'de': ['salz']}", "salz"),
    ("['cut', 'the onions']", "cut the onions"),
    ("[Music] playing", "[Music] playing"),
    ("[Music]", "[Music]"),  # a caption in brackets, not a list
    ("plain words {en}", "plain words {en}"),
])
def test_caption_texts_that_are_literals_are_read_for_their_lines(text, caption):
    from milnce.train.shards import parse_captions

    assert parse_captions({"txt": text.encode()}, 4.0) == [(0.0, 4.0, caption)]


@pytest.mark.parametrize("text", [
    "{'en': []}", "{}", "{'en': [{'x': 1}]}",  # hold no caption lines
    "{'en': ['a'}",  # not a literal
    "{__import__('os').system('touch /tmp/milnce_pwned')}",  # code is never run
    "{'en': ['" + "a" * 70000 + "']}",  # past the size bound
    "{" * 100000 + "}" * 100000,  # nesting past the parser's limits
])
def test_caption_texts_that_are_unusable_literals_are_bad_records(text):
    from milnce.train.shards import BadRecord, parse_captions

    with pytest.raises(BadRecord):
        parse_captions({"txt": text.encode()}, 4.0)
    assert not Path("/tmp/milnce_pwned").exists()


def test_a_deeply_nested_json_is_a_bad_record():
    from milnce.train.shards import BadRecord, parse_captions

    with pytest.raises(BadRecord, match="not JSON"):
        parse_captions({"__key__": "deep", "json": b"[" * 100000 + b"]" * 100000}, 4.0)


def _shard(path: Path, extra: dict[str, bytes]) -> Path:
    """The clipped fixture's records, after ``extra`` members (a hostile record first)."""
    with tarfile.open(FIXTURES / "clipped" / "00000.tar") as src:
        members = [(m.name, src.extractfile(m).read()) for m in src.getmembers()]  # type: ignore[union-attr]
    with tarfile.open(path, "w") as tf:
        for name, data in [*extra.items(), *members]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_shard_stream_counts_a_record_that_raises_and_goes_on(tmp_path):
    from milnce.text import Tokenizer
    from milnce.train.shards import ShardClips, ShardSet
    from milnce.windows import WindowSettings

    tar = _shard(tmp_path / "s.tar", {"deep.json": b"[" * 100000 + b"]" * 100000, "deep.mp4": b"\x00" * 100})
    tok = Tokenizer(WORDS)
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


def test_training_on_a_shard_with_a_deeply_nested_json_counts_it(tmp_path, capsys):
    tar = _shard(tmp_path / "s.tar", {"deep.json": b"[" * 100000 + b"]" * 100000, "deep.mp4": b"\x00" * 100})
    np.save(tmp_path / "vocab.npy", np.asarray(WORDS, dtype=str), allow_pickle=False)
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"fps": 4, "num_frames": 8, "size": 32, "decode_size": 36, "min_time": 2.0,
                               "num_candidates": 1, "batch_size": 2, "workers": 0, "eval_every": 0,
                               "save_every": 0, "progress": False, "bad_fraction": 0.5, "threads": 1}))
    run = tmp_path / "run"
    assert main(["train", "--data", str(tar), "--vocab", str(tmp_path / "vocab.npy"), "--out", str(run),
                 "--config", str(cfg), "--steps", "1"]) == 0
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    bad = [r["sample"] for r in recs if r["kind"] == "bad_sample"]
    assert len(bad) == 1 and "deep" in bad[0] and "not JSON" in bad[0]
    assert "1 unreadable sample(s) skipped" in capsys.readouterr().err


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


def test_clips_shorter_than_min_time_are_sampled_inside_the_clip():
    """A clip cut at one subtitle line (1-1.5 s) with --min-time 5: the window is taken inside the
    clip's video (padded past its end), never starting past its end (a bad sample before)."""
    from milnce.text import Tokenizer
    from milnce.train.shards import ShardClips, ShardSet
    from milnce.windows import WindowSettings

    tar = FIXTURES / "clipped" / "00000.tar"
    clips = ShardClips(ShardSet((str(tar),), str(tar)), Tokenizer(WORDS), WindowSettings(fps=4, num_frames=8, size=32),
                       seed=0, decode_size=36, min_time=5.0, num_candidates=1, hflip=False, rank=0, world=1)
    got = [x for _, x in zip(range(8), iter(clips))]  # two epochs of the 4 clips
    assert [g[2]["bad"] for g in got] == [0] * 8, [g[2]["notes"] for g in got]
