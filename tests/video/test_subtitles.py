"""Subtitle readers (milnce.video.subtitles): SRT/VTT parsing, bad input one line each, sidecar
names and languages, embedded text streams through PyAV."""

from __future__ import annotations

import os
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from milnce.video.subtitles import (
    MAX_SUBTITLE_BYTES,
    SubtitleError,
    clean_text,
    find_sidecars,
    lang_wanted,
    parse_langs,
    parse_subtitles,
    read_embedded,
    read_sidecar,
)

SRT = "1\r\n00:00:01,500 --> 00:00:02,750\r\nadd two teaspoons\r\nof baking soda\r\n\r\n2\r\n00:01:00,000 --> 00:01:01,000\r\nstir\r\n"


def test_srt_comma_vtt_dot_bom_crlf(tmp_path):
    p = tmp_path / "a.srt"
    p.write_bytes(b"\xef\xbb\xbf" + SRT.encode())
    t = read_sidecar(str(p), "en")
    assert [(c.start, c.end, c.text) for c in t.cues] == [(1.5, 2.75, "add two teaspoons of baking soda"),
                                                          (60.0, 61.0, "stir")]
    assert t.lang == "en" and t.skipped == 0
    vtt = "WEBVTT\n\nNOTE a comment\n\n00:01.000 --> 00:02.500 align:start\nhello\n\n1:00:00.250 --> 1:00:01.000\nlate\n"
    cues, skipped = parse_subtitles(vtt)
    assert [(c.start, c.end) for c in cues] == [(1.0, 2.5), (3600.25, 3601.0)] and skipped == 0


def test_malformed_timestamps_are_skipped_and_counted():
    text = ("1\n00:00:01,000 --> 00:00:0x,000\nbad end\n\n2\n00:00:02,000 --> 00:00:01,000\nbackwards\n\n"
            "3\n00:99:02,000 --> 00:99:03,000\nminutes 99\n\n4\n00:00:05,000 --> 00:00:06,000\nkept\n\n"
            "5\n00:00:07,000 -->\nno end\n\njust a stray line\n")
    cues, skipped = parse_subtitles(text)
    assert [c.text for c in cues] == ["kept"]
    assert skipped == 5


def test_out_of_order_and_overlapping_cues_are_sorted_and_kept():
    text = ("00:00:05.000 --> 00:00:07.000\nthird\n\n00:00:01.000 --> 00:00:04.000\nfirst\n\n"
            "00:00:03.000 --> 00:00:06.000\nsecond overlaps\n")
    cues, skipped = parse_subtitles(text)
    assert [c.text for c in cues] == ["first", "second overlaps", "third"] and skipped == 0


def test_markup_is_stripped_never_kept_as_html():
    assert clean_text("<i>add</i> <font color=\"red\">salt</font> &amp; <script>x</script>") == "add salt & x"
    assert clean_text("{\\i1}stir{\\r} the\\Npot") == "stir the pot"
    assert clean_text("&lt;b&gt;bold&lt;/b&gt; \x07bell") == "bold bell"
    cues, _ = parse_subtitles("00:00:01.000 --> 00:00:02.000\n<c.colorE5E5E5>now</c><00:00:01.500><c> add</c>\n")
    assert cues[0].text == "now add"


def test_ytdlp_rolling_lines_are_deduplicated():
    """yt-dlp's automatic VTT: each cue repeats the previous line, with <c> word timings and 10 ms
    bridge cues; every spoken line is stored once (else BM25 counts it two or three times)."""
    vtt = """WEBVTT
Kind: captions
Language: en

00:00:00.000 --> 00:00:02.000 align:start position:0%
now<00:00:00.500><c> add</c><00:00:01.000><c> salt</c>

00:00:02.000 --> 00:00:02.010 align:start position:0%
now add salt
{blank}

00:00:02.010 --> 00:00:04.000 align:start position:0%
now add salt
stir<00:00:02.500><c> the</c><c> pot</c>

00:00:04.000 --> 00:00:04.010 align:start position:0%
stir the pot
{blank}

00:00:04.010 --> 00:00:06.000 align:start position:0%
stir the pot
serve hot
""".format(blank=" ")  # yt-dlp's bridge cues hold a line of one space
    cues, skipped = parse_subtitles(vtt)
    assert [c.text for c in cues] == ["now add salt", "stir the pot", "serve hot"]
    assert skipped == 0


def test_huge_sidecar_is_refused_without_reading_it(tmp_path):
    big = tmp_path / "v.srt"
    with open(big, "wb") as f:
        f.write(SRT.encode())
        f.truncate(1 << 30)  # 1 GB, sparse
    t0 = time.perf_counter()
    with pytest.raises(SubtitleError, match="larger than 16 MiB"):
        read_sidecar(str(big), None)
    assert time.perf_counter() - t0 < 2.0
    assert MAX_SUBTITLE_BYTES == 16 << 20


def test_cp1252_and_latin1_files_are_read_and_named(tmp_path):
    p = tmp_path / "caf\u00e9.fr.srt"
    p.write_bytes("1\n00:00:01,000 --> 00:00:02,000\nun caf\u00e9 \u201cnoir\u201d\n".encode("cp1252"))
    t = read_sidecar(str(p), "fr")
    assert t.encoding == "cp1252" and t.cues[0].text == "un caf\u00e9 \u201cnoir\u201d"
    q = tmp_path / "l.srt"  # 0x81 is not cp1252: Latin-1
    q.write_bytes(b"1\n00:00:01,000 --> 00:00:02,000\nna\xefve \x81\n")
    t = read_sidecar(str(q), None)
    assert t.encoding == "latin-1" and t.cues[0].text == "na\u00efve"
    u = tmp_path / "u.srt"
    u.write_bytes(b"\xff\xfe" + "1\n00:00:01,000 --> 00:00:02,000\nwide\n".encode("utf-16-le"))
    assert read_sidecar(str(u), None).cues[0].text == "wide"
    b = tmp_path / "bin.srt"
    b.write_bytes(b"\x00\x01\x02binary")
    with pytest.raises(SubtitleError, match="binary"):
        read_sidecar(str(b), None)


def test_sidecar_names_and_languages(tmp_path):
    for n in ("clip.mp4", "clip.srt", "clip.en.vtt", "clip.de.srt", "clip.pt-BR.vtt", "clip.part2.mp4",
              "clip.part2.srt", "clip.notes.txt", "other.en.vtt", "clip.en-orig.vtt"):
        (tmp_path / n).write_text("x")
    video = str(tmp_path / "clip.mp4")
    got = [(os.path.basename(p), lang) for p, lang in find_sidecars(video)]
    assert got == [("clip.de.srt", "de"), ("clip.en-orig.vtt", "en-orig"), ("clip.en.vtt", "en"),
                   ("clip.pt-BR.vtt", "pt-BR"), ("clip.srt", None)]
    en = [(os.path.basename(p), lang) for p, lang in find_sidecars(video, parse_langs("en"))]
    assert en == [("clip.en-orig.vtt", "en-orig"), ("clip.en.vtt", "en"), ("clip.srt", None)]
    assert find_sidecars(video, parse_langs("none")) == []
    assert lang_wanted("pt-BR", parse_langs("pt_br")) and not lang_wanted("de", ("en",))
    with pytest.raises(SubtitleError, match="not a language tag"):
        parse_langs("en,--x")


def video_with_subtitles(path: Path, srt: str | None, bad_ass: bool = False) -> Path:
    """A video with a text subtitle stream: the packets of the ``srt`` text (stream-copied from
    PyAV's SRT demuxer, no encoder needed), or one ASS packet without its header (undecodable)."""
    import av

    src = path.parent / ".srt-source" / (path.stem + ".srt")  # hidden: not a sidecar of the video
    src.parent.mkdir(exist_ok=True)
    src.write_text(srt or "1\n00:00:00,000 --> 00:00:00,500\nx\n", encoding="utf-8")
    with av.open(str(src)) as sub_in, av.open(str(path), "w") as out:
        v = out.add_stream("mpeg4", rate=10)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        s = out.add_stream("ass") if bad_ass else out.add_stream_from_template(sub_in.streams.subtitles[0])
        s.metadata["language"] = "eng"
        for _ in range(30):
            for p in v.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")):
                out.mux(p)
        for p in v.encode():
            out.mux(p)
        if bad_ass:
            pk = av.Packet(b"\xff\xfe garbage {\\i1 no close")
            pk.stream, pk.pts, pk.dts, pk.duration, pk.time_base = s, 0, 0, 500, Fraction(1, 1000)
            out.mux(pk)
        else:
            for pk in sub_in.demux(sub_in.streams.subtitles[0]):
                if pk.size:
                    pk.stream = s
                    out.mux(pk)
    return path


def test_embedded_text_stream_times_from_packets(tmp_path):
    v = video_with_subtitles(tmp_path / "v.mkv", "1\n00:00:00,500 --> 00:00:01,500\n<i>add</i> salt\n\n"
                              "2\n00:00:02,500 --> 00:00:02,900\nstir {\\b1}it{\\b0}\n")
    tracks, problems = read_embedded(str(v))
    assert problems == []
    assert [(round(c.start, 3), round(c.end, 3), c.text) for c in tracks[0].cues] == [(0.5, 1.5, "add salt"),
                                                                                      (2.5, 2.9, "stir it")]
    assert tracks[0].lang == "en" and tracks[0].source == "stream:1"  # the stream's "eng", as sidecars name it
    assert read_embedded(str(v), ("de",))[0] == []


def test_embedded_stream_that_fails_to_decode_is_one_line(tmp_path):
    v = video_with_subtitles(tmp_path / "bad.mkv", None, bad_ass=True)
    tracks, problems = read_embedded(str(v))
    assert tracks == [] and len(problems) == 1
    assert "could not be decoded" in problems[0] and "\n" not in problems[0]
