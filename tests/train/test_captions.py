"""``milnce.train.captions``: The timed captions of one tar-shard record, in the layouts ``video2dataset``
(1.3.0) writes."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

pytest.importorskip("webdataset")


# ----------------------------------------------------------------------------- tar shards

def test_captions_of_every_shard_layout():
    from milnce.train.shards import BadRecord, parse_captions

    v2d = {"yt_meta_dict": {"info": None, "subtitles": {"de": [], "en": [
        {"start": "00:00:01.500", "end": "00:00:03.000", "lines": ["cut the", "onions"]},
        {"start": "00:01:00.000", "end": "00:01:02.250", "lines": ["stir"]}]}}}
    assert parse_captions({"json": json.dumps(v2d).encode()}, 5.0) == [(1.5, 3.0, "cut the onions"), (60.0, 62.25, "stir")]
    clipped = {"yt_meta_dict": {"subtitles": [{"start": "00:00:00.000", "end": "00:00:01.000", "lines": ["a"]}]}}
    assert parse_captions({"json": json.dumps(clipped).encode()}, 5.0) == [(0.0, 1.0, "a")]
    simple = [{"start": 2, "end": 4.5, "text": "b"}, {"start": 0, "end": 1, "text": "a"}]
    assert parse_captions({"json": json.dumps(simple).encode()}, 5.0) == [(0.0, 1.0, "a"), (2.0, 4.5, "b")]
    assert parse_captions({"txt": b"whole clip"}, 4.0) == [(0.0, 4.0, "whole clip")]
    with pytest.raises(BadRecord, match="before it starts"):
        parse_captions({"json": json.dumps([{"start": 3, "end": 1, "text": "x"}]).encode()}, 5.0)
    with pytest.raises(BadRecord, match="no captions"):
        parse_captions({"json": b"{}"}, 5.0)

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "video2dataset"


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
