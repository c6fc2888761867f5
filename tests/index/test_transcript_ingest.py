"""Transcripts while indexing and searching end to end (random-weight model, generated videos):
sidecars and embedded streams stored with each video, a changed subtitle file read again without
re-embedding, bad subtitle input reported one line each while the video is indexed, the CLI's
--mode / --speech-weight / cue lines, the API's fields and OpenAPI schema, --from-features."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from milnce.cli import main
from milnce.index import Index, build_index
from milnce.windows import WindowSettings
from tests.video.test_subtitles import video_with_subtitles
from video_fixtures import make_scene_video

SMALL = {"fps": 10.0, "num_frames": 8, "size": 64, "stride": 4}
SMALL_ARGS = ["--fps", "10", "--num-frames", "8", "--size", "64", "--stride", "4"]

pytestmark = pytest.mark.usefixtures("reuse_model")

SAID = "1\n00:00:00,500 --> 00:00:01,500\nnow <i>add</i> the salt\n\n2\n00:00:02,000 --> 00:00:02,800\npour water\n"


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("speech")
    make_scene_video(d / "red.mp4", 3.0, (220, 30, 30), 1)
    (d / "red.en.srt").write_text(SAID, encoding="utf-8")
    make_scene_video(d / "green.mp4", 3.0, (30, 200, 40), 2)
    (d / "green.de.vtt").write_text("WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nden Ball werfen\n", encoding="utf-8")
    video_with_subtitles(d / "inner.mkv", "1\n00:00:00,200 --> 00:00:01,200\nopen the door\n")
    make_scene_video(d / "silent.mp4", 2.0, (30, 40, 220), 3)
    return d


def test_index_stores_sidecars_and_streams_and_reports(tmp_path, collection, model, capsys):
    ix = tmp_path / "ix"
    rep = build_index([collection], ix, model, progress=False, window=WindowSettings.for_model(model, **SMALL))
    assert not rep.failed and rep.transcripts == 3 and rep.cues == 4 and rep.subtitles_read == 4
    assert "transcripts: 3 of 4 videos (4 cues" in rep.summary()
    with Index.open(ix, model) as idx:
        assert idx.search_mode(None)[0] == "hybrid"
        got = idx.search("add salt", k=3, mode="speech")
        assert got[0].path.endswith("red.mp4") and got[0].cues[0]["text"] == "now add the salt"
        assert got[0].cues[0]["lang"] == "en"
        door = idx.search("open the door", k=1, mode="speech")[0]
        assert door.path.endswith("inner.mkv") and door.cues[0]["lang"] == "en"
    only_en = build_index([collection], tmp_path / "en", model, progress=False, subtitle_langs=("en",), window=WindowSettings.for_model(model, **SMALL))
    assert only_en.transcripts == 2  # red.en.srt and inner.mkv's stream (eng); green.de.vtt is left out


def test_changed_subtitle_is_read_again_without_reembedding(tmp_path, collection, model):
    src = tmp_path / "v"
    shutil.copytree(collection, src)
    ix = tmp_path / "ix"
    build_index([src], ix, model, progress=False, window=WindowSettings.for_model(model, **SMALL))
    again = build_index([src], ix, model, progress=False, window=WindowSettings.for_model(model, **SMALL))
    assert again.subtitles_read == 0 and again.windows_added == 0 and again.unchanged == 4
    (src / "red.en.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\ncut the tomato\n", encoding="utf-8")
    (src / "silent.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nplaying guitar\n", encoding="utf-8")
    rep = build_index([src], ix, model, progress=False, window=WindowSettings.for_model(model, **SMALL))
    assert rep.windows_added == 0 and rep.updated == [] and rep.unchanged == 4  # no video embedded again
    assert rep.subtitles_read == 2 and rep.transcripts == 4
    with Index.open(ix, model) as idx:
        assert idx.search("add salt", k=3, mode="speech") == []
        assert idx.search("tomato", k=1, mode="speech")[0].path.endswith("red.mp4")
        assert idx.search("guitar", k=1, mode="speech")[0].path.endswith("silent.mp4")
    (src / "silent.srt").unlink()
    rep = build_index([src], ix, model, progress=False, window=WindowSettings.for_model(model, **SMALL))
    assert rep.subtitles_read == 1 and rep.transcripts == 3


def test_bad_subtitles_are_one_line_each_and_the_video_is_indexed(tmp_path, wargs, capsys):
    src = tmp_path / "v"
    make_scene_video(src / "big.mp4", 2.0, (200, 200, 30), 4)
    with open(src / "big.srt", "wb") as f:
        f.write(SAID.encode())
        f.truncate(1 << 30)  # a 1 GB sidecar (sparse)
    make_scene_video(src / "latin.mp4", 2.0, (20, 200, 200), 5)
    (src / "latin.fr.srt").write_bytes("1\n00:00:00,000 --> 00:00:01,000\ncaf\u00e9 cr\u00e8me\n\n"
                                       "2\n00:00:xx,000 --> 00:00:02,000\nbroken\n".encode("cp1252"))
    video_with_subtitles(src / "badstream.mkv", None, bad_ass=True)
    assert main(["index", str(src), "--index", str(tmp_path / "ix"), "--quiet", *SMALL_ARGS, *wargs]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    lines = [ln for ln in out.out.splitlines() if ln.strip().startswith("subtitles:")]
    assert any("big.srt: larger than 16 MiB: not read; not used" in ln for ln in lines)
    assert any("latin.fr.srt: not UTF-8: read as cp1252" in ln for ln in lines)
    assert any("latin.fr.srt: 1 cue skipped" in ln for ln in lines)
    assert any("badstream.mkv: subtitle stream 1 (ssa) could not be decoded" in ln and "indexed without it" in ln
               for ln in lines)
    assert "transcripts: 1 of 3 videos (1 cue" in out.out
    with Index.open(tmp_path / "ix") as idx:
        assert idx.num_videos == 3  # every video indexed visually


def test_cli_search_modes_print_cues(tmp_path, collection, wargs, capsys):
    ix = tmp_path / "ix"
    assert main(["index", str(collection), "--index", str(ix), "--quiet", *SMALL_ARGS, *wargs]) == 0
    capsys.readouterr()
    assert main(["search", "add salt", "--index", str(ix), "-k", "1", *wargs]) == 0
    assert "hybrid: pictures and speech, speech weight 0.1" in capsys.readouterr().out.splitlines()[0]
    assert main(["search", "add salt", "--index", str(ix), "-k", "2", "--speech-weight", "5", *wargs]) == 0
    out = capsys.readouterr().out
    assert "speech weight 5" in out.splitlines()[0]
    assert "0:00:00.5-0:00:01.5 [en]  now *add* the *salt*" in out
    assert main(["search", "add salt", "--index", str(ix), "--mode", "speech", "--json", *wargs]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["scoring"] == "speech"
    m = body["results"][0]["moments"][0]
    assert m["cues"][0]["matches"] == [[4, 7], [12, 16]] and 0 < m["speech_score"] <= 1
    assert main(["search", "add salt", "--index", str(ix), "--mode", "visual", "--json", *wargs]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["scoring"] == "visual" and body["results"][0]["moments"][0]["cues"] is None
    assert main(["search", "add salt", "--index", str(ix), "--mode", "speech", "--speech-weight", "2", *wargs]) == 2
    assert "needs --mode hybrid" in capsys.readouterr().err


def test_api_mode_fields_and_openapi(tmp_path, collection, model):
    from fastapi.testclient import TestClient

    from milnce.server import create_app

    ix = tmp_path / "ix"
    build_index([collection], ix, model, progress=False, window=WindowSettings.for_model(model, **SMALL))
    with Index.open(ix, model) as idx, TestClient(create_app(idx, model)) as c:
        r = c.get("/api/search", params={"q": "add salt", "k": 3, "speech_weight": 5})
        body = r.json()
        assert r.status_code == 200 and body["mode"] == "hybrid" and body["speech_weight"] == 5
        assert c.get("/api/search", params={"q": "add salt"}).json()["speech_weight"] == 0.1
        spoken = [m for m in body["results"] if m["cues"]]
        assert spoken and spoken[0]["cues"][0]["text"] == "now add the salt"
        assert set(spoken[0]) >= {"visual_score", "speech_score", "cues", "score"}
        body = c.get("/api/search", params={"q": "add salt", "mode": "visual"}).json()
        assert body["mode"] == "visual" and body["speech_weight"] is None
        assert c.get("/api/search", params={"q": "add", "mode": "audio"}).status_code == 422
        assert c.get("/api/search", params={"q": "add", "speech_weight": -1}).status_code == 422
        body = c.get("/api/search", params={"q": "add a-b foo:bar * AND", "mode": "speech"}).json()
        assert body["mode"] == "speech"
        spec = c.get("/openapi.json").json()
        op = spec["paths"]["/api/search"]["get"]
        assert {p["name"] for p in op["parameters"]} >= {"mode", "speech_weight"}
        moment = op["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["results"]["items"]
        cue = moment["properties"]["cues"]["anyOf"][0]["items"]
        assert set(cue["required"]) == {"start", "end", "text", "lang", "matches"}


def test_from_features_reads_the_sidecar_next_to_the_feature_file(tmp_path, collection, wargs, capsys):
    out = tmp_path / "feat"
    video = tmp_path / "v" / "red.mp4"
    video.parent.mkdir()
    shutil.copy(collection / "red.mp4", video)
    assert main(["extract", str(video), "--out", str(out), "--workers", "0", *SMALL_ARGS, *wargs]) == 0
    files = [os.path.join(r, f) for r, _, fs in os.walk(out) for f in fs if f.endswith(".npz")]
    assert len(files) == 1
    stem = files[0][:-len(".npz")]
    Path(stem + ".en.srt").write_text(SAID, encoding="utf-8")
    capsys.readouterr()
    assert main(["index", "--from-features", str(out), "--index", str(tmp_path / "ix"), "--root", str(video.parent),
                 "--quiet"]) == 0
    assert "transcripts: 1 of 1 video (2 cues" in capsys.readouterr().out
