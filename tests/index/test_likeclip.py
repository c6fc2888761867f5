"""Query by any clip (``milnce search --like-file CLIP[@START-END]``, ``milnce.index.likeclip``):
the grammar, how windows are combined, the still image as a frozen clip, the CLI's ranking (the
same path as a text query: filters, negatives, pages) and its one-line refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from index_fixtures import WINDOW_32
from milnce.cli import main
from milnce.errors import MissingFileError
from milnce.index import Index, build_index
from milnce.index.filters import VideoFilter
from milnce.index.likeclip import LikeFileError, clip_query, combine_windows, is_still
from milnce.timespec import TimeSpecError, parse_clip_file
from milnce.video.decode import VideoError
from milnce.windows import WindowSettings
from video_fixtures import make_scene_video

pytestmark = pytest.mark.usefixtures("reuse_model")


@pytest.fixture(scope="module")
def lib(tmp_path_factory, model) -> dict:
    root = tmp_path_factory.mktemp("likefile")
    vids = root / "videos"
    make_scene_video(vids / "red.mp4", 3.0, (220, 30, 30), 1)
    make_scene_video(vids / "sub" / "green.mp4", 4.0, (30, 200, 40), 2)
    make_scene_video(vids / "blue.mp4", 2.5, (30, 40, 220), 3)
    build_index([vids], root / "ix", model, progress=False, window=WindowSettings.for_model(model, **WINDOW_32))
    mine = root / "mine"
    mine.mkdir()
    shutil.copy(vids / "red.mp4", mine / "my red clip.mp4")  # not in the index: embedded as a user's clip
    import av

    with av.open(str(vids / "blue.mp4")) as c:
        frame = next(iter(c.decode(video=0)))
    frame.to_image().save(mine / "still.png")
    return {"root": root, "vids": vids, "ix": root / "ix", "mine": mine}


def test_parse_clip_file_grammar(tmp_path):
    assert parse_clip_file("a.mp4") == ("a.mp4", None, None)
    assert parse_clip_file("a.mp4@1:05-80.5") == ("a.mp4", 65.0, 80.5)
    assert parse_clip_file("dir@x/a.mp4@0-2") == ("dir@x/a.mp4", 0.0, 2.0)
    odd = tmp_path / "take@2.mp4"
    odd.write_bytes(b"")
    assert parse_clip_file(str(odd)) == (str(odd), None, None)  # an existing name with @ is that file
    for bad in ("a.mp4@5", "a.mp4@3-2", "a.mp4@2-2", "a.mp4@1e3-2000", "@1-2", "a.mp4@-2", "a.mp4@1:75-2:00"):
        with pytest.raises(TimeSpecError):
            parse_clip_file(bad)


def test_combine_windows_is_the_mean_direction_at_the_mean_norm():
    e = np.array([[3.0, 0, 0], [0, 10.0, 0], [0, 0, 0]])  # a zero window is left out
    v = combine_windows(e)
    np.testing.assert_allclose(v, np.array([1, 1, 0]) / np.sqrt(2) * 6.5, rtol=1e-6)
    with pytest.raises(LikeFileError):
        combine_windows(np.zeros((2, 3)))
    with pytest.raises(LikeFileError):
        combine_windows(np.array([[1.0, 0], [-1.0, 0]]))  # they cancel out
    with pytest.raises(LikeFileError):
        combine_windows(np.zeros((0, 3)))


def test_clip_query_uses_the_index_settings_and_the_span(lib, model):
    with Index.open(lib["ix"], model) as ix:
        whole = clip_query(model, ix.settings, lib["mine"] / "my red clip.mp4")
        red = next(r for r in ix.videos() if r.path.endswith("red.mp4"))
        _, _, stored = ix.windows(red.id)
        # the same file as an indexed video: the same windows, combined
        np.testing.assert_allclose(whole.vector, combine_windows(np.asarray(stored)), rtol=1e-3, atol=1e-3)
        assert whole.windows == len(stored) and not whole.still
        part = clip_query(model, ix.settings, lib["mine"] / "my red clip.mp4", 0.5, 2.0)
        assert part.start >= 0.5 - 1e-6 and part.windows < whole.windows
        with pytest.raises((LikeFileError, VideoError), match="no frames|past the end"):
            clip_query(model, ix.settings, lib["mine"] / "my red clip.mp4", 50.0, 60.0)
        with pytest.raises(MissingFileError):
            clip_query(model, ix.settings, lib["mine"] / "nope.mp4")


def test_still_image_is_one_frozen_window(lib, model):
    assert is_still("x.PNG") and is_still("a.jpeg") and not is_still("a.mp4")
    with Index.open(lib["ix"], model) as ix:
        q = clip_query(model, ix.settings, lib["mine"] / "still.png", 1.0, 2.0)  # a span is meaningless: ignored
        assert q.still and q.windows == 1 and q.start == 0.0
        assert q.vector.shape == (ix.dim,) and np.isfinite(q.vector).all()


def test_cli_like_file_ranks_as_a_text_query(lib, model, wargs, capsys):
    clip = lib["mine"] / "my red clip.mp4"
    assert main(["search", "--index", str(lib["ix"]), "--like-file", f"{clip}@0.4-2.4", "--no-merge", "-k", "50",
                 "--json", *wargs]) == 0
    res = json.loads(capsys.readouterr().out)["results"][0]
    assert res["query"] == f"like-file {clip}@0.4-2.4"
    with Index.open(lib["ix"], model) as ix:
        q = clip_query(model, ix.settings, clip, 0.4, 2.4)
        want = ix.search_embeddings(q.vector, 50, merge=False)[0]
        assert [(m["video_id"], m["start"]) for m in res["moments"]] == [(m.video_id, m.start) for m in want]
        assert {m.video_id for m in want} == {r.id for r in ix.videos()}  # every indexed window ranked
        # filters, negatives and pages go through the same path
        under = str(lib["vids"] / "sub")
        filt = ix.search_embeddings(q.vector, 5, video_filter=VideoFilter(under=under))[0]
        neg = ix.search_embeddings(q.vector, 5, neg=ix.negative_embeddings(["green door"]), not_weight=0.5)[0]
        page = ix.search_embeddings(q.vector, 2, offset=2, merge=False)[0]
    assert main(["search", "--index", str(lib["ix"]), "--like-file", str(clip) + "@0.4-2.4", "--under", under,
                 "-k", "5", "--json", *wargs]) == 0
    got = json.loads(capsys.readouterr().out)["results"][0]["moments"]
    assert [m["video_id"] for m in got] == [m.video_id for m in filt] and all("green" in m["path"] for m in got)
    assert main(["search", "--index", str(lib["ix"]), "--like-file", str(clip) + "@0.4-2.4", "--not", "green door",
                 "-k", "5", "--json", *wargs]) == 0
    got = json.loads(capsys.readouterr().out)["results"][0]["moments"]
    assert [round(m["score"], 4) for m in got] == [round(m.score, 4) for m in neg]
    assert main(["search", "--index", str(lib["ix"]), "--like-file", str(clip) + "@0.4-2.4", "--no-merge", "-k", "2",
                 "--offset", "2", "--json", *wargs]) == 0
    got = json.loads(capsys.readouterr().out)["results"][0]["moments"]
    assert [(m["video_id"], m["start"]) for m in got] == [(m.video_id, m.start) for m in page]


def test_cli_like_file_still_and_table(lib, wargs, capsys):
    assert main(["search", "--index", str(lib["ix"]), "--like-file", str(lib["mine"] / "still.png"), "-k", "3",
                 *wargs]) == 0
    out = capsys.readouterr().out
    assert "like-file " in out and "still.png" in out


@pytest.mark.parametrize("spec, code, words", [
    ("{mine}/nope.mp4", 2, "no such file"),
    ("{mine}/my red clip.mp4@9-1", 2, "END must be after START"),
    ("{mine}/my red clip.mp4@50-60", None, "past the end"),
    ("{mine}/garbage.mp4", None, "garbage.mp4"),
])
def test_cli_like_file_refusals_are_one_line(lib, wargs, capsys, spec, code, words):
    (lib["mine"] / "garbage.mp4").write_bytes(b"\x00not a video" * 100)
    rc = main(["search", "--index", str(lib["ix"]), "--like-file", spec.format(mine=lib["mine"]), *wargs])
    err = capsys.readouterr().err
    assert rc != 0 and (code is None or rc == code)
    assert words in err and "Traceback" not in err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err


def test_like_file_option_has_a_meaning():
    from milnce.commands.vocabulary import MEANINGS

    assert "--like-file" in MEANINGS
