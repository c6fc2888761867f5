"""The commands over a Milvus Lite file, unchanged for the user: ``index``, ``search`` (the same
JSON as a folder index of the same videos), ``remove``, ``clip``, and ``serve`` with a folder
index and a collection side by side (files served by the same rules: a link swapped in for an
indexed file is refused). Also: a second process opening the same file gets one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from milvus_fixtures import require_milvus_lite
from video_fixtures import make_video

require_milvus_lite()
pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from milnce.cli import main  # noqa: E402
from milnce.index import Index  # noqa: E402
from milnce.index.milvus_store import MilvusIndex  # noqa: E402
from milnce.server import create_app  # noqa: E402

pytestmark = pytest.mark.usefixtures("reuse_model")
WINDOW = ["--num-frames", "8", "--size", "32", "--stride", "4", "--fps", "10"]


@pytest.fixture(scope="module")
def built(tmp_path_factory, checkpoint):
    root = tmp_path_factory.mktemp("milvus_cli")
    videos = root / "videos"
    videos.mkdir()
    for i, n in enumerate((24, 36, 30)):
        make_video(videos / f"v{i}.mp4", n=n, marker=True)
    wargs = ["--weights", str(checkpoint[0]), "--vocab", str(checkpoint[1])]
    folder, db = str(root / "folder"), str(root / "videos.db")
    for where in (folder, db):
        assert main(["index", str(videos), "--index", where, *wargs, *WINDOW, "--quiet", "--workers", "0"]) == 0
    return root, videos, folder, db, wargs


def test_search_answers_as_the_folder_index(built, capsys) -> None:
    _, videos, folder, db, wargs = built
    capsys.readouterr()
    got = {}
    for where in (folder, db):
        assert main(["search", "--index", where, "cut a tomato", "open the door", "--not", "car", "-k", "4",
                     "--offset", "1", "--json", *wargs]) == 0
        got[where] = json.loads(capsys.readouterr().out)
        got[where].pop("index")
        got[where].pop("ann")  # "not built" for both; the kind differs
    assert got[folder] == got[db]
    assert [len(r["moments"]) for r in got[db]["results"]] == [4, 4]


def test_remove_and_clip(built, tmp_path, capsys) -> None:
    _, videos, folder, db, wargs = built
    with MilvusIndex.open(db) as ix:
        vid = ix.video_id_of(str(videos / "v1.mp4"))
    assert vid is not None
    out = tmp_path / "cut.mp4"
    assert main(["clip", "--index", db, f"{vid}@0.2-1.5", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    assert main(["remove", "--index", db, str(videos / "v2.mp4")]) == 0
    assert "2 videos left" in capsys.readouterr().out
    assert main(["index", str(videos), "--index", db, *wargs, "--quiet", "--workers", "0"]) == 0  # back again
    with MilvusIndex.open(db) as ix:
        assert ix.num_videos == 3 and ix.count_windows() == ix.num_live


def test_served_beside_a_folder_index(built, model, tmp_path) -> None:
    _, videos, folder, db, _ = built
    with Index.open(folder, model) as a, MilvusIndex.open(db, model) as b:
        with TestClient(create_app({"folder": a, "lite": b}, model)) as client:
            r = client.get("/api/search", params={"q": "cut a tomato", "k": 6})
            assert r.status_code == 200, r.text
            hits = r.json()["results"]
            assert {h["index"] for h in hits} == {"folder", "lite"}
            one = [h for h in hits if h["index"] == "lite"][0]
            r = client.get(one["file_url"])
            assert r.status_code in (200, 206), r.text[:200]
            assert one["file_url"].endswith("?index=lite")
            path = next(p for p in videos.iterdir() if p.name == Path(b.video(one["video_id"]).path).name)
            secret = tmp_path / "secret.txt"
            secret.write_bytes(b"SECRET " * 50)
            aside = path.with_name(path.name + ".aside")
            os.replace(path, aside)
            try:
                path.symlink_to(secret)
                r = client.get(one["file_url"])
                assert r.status_code == 409 and b"SECRET" not in r.content
            finally:
                path.unlink()
                os.replace(aside, path)


@pytest.mark.slow
def test_a_second_process_gets_one_line(built) -> None:
    _, _, _, db, wargs = built
    src = str(Path(__file__).resolve().parent.parent / "src")
    with MilvusIndex.open(db):
        p = subprocess.run([sys.executable, "-m", "milnce", "search", "--index", db, "tomato", *wargs],
                           capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "open in another process" in lines[0] and "Traceback" not in p.stderr, p.stderr


def test_localize_reads_the_collection_windows(built, capsys, monkeypatch) -> None:
    _, videos, folder, db, wargs = built
    read = []
    real = MilvusIndex.windows
    monkeypatch.setattr(MilvusIndex, "windows", lambda self, vid: read.append(vid) or real(self, vid))
    got = {}
    for where in (folder, db):
        capsys.readouterr()
        assert main(["localize", str(videos / "v0.mp4"), "cut a tomato", "--index", where, "--json", "--quiet",
                     *wargs]) == 0
        got[where] = json.loads(capsys.readouterr().out)
    assert got[folder] == got[db] and got[db]["moments"]
    assert len(read) == 1  # the stored windows, not embedded again


def test_unreadable_videos_are_kept_in_the_collection(built, tmp_path, capsys) -> None:
    _, _, _, _, wargs = built
    videos = tmp_path / "v"
    videos.mkdir()
    make_video(videos / "good.mp4", n=20)
    (videos / "bad.mp4").write_bytes(b"not a video at all" * 10)
    db = str(tmp_path / "e.db")
    run = ["index", str(videos), "--index", db, *wargs, *WINDOW, "--quiet", "--workers", "0"]
    assert main(run) == 1  # finished, one input failed
    out = capsys.readouterr()
    assert "1 added" in out.out and "errors.log" not in out.out and "bad.mp4" in out.err
    with MilvusIndex.open(db) as ix:
        assert [os.path.basename(p) for p, _ in ix.errors()] == ["bad.mp4"] and ix.num_videos == 1
    assert main(run) == 1  # not tried again: failed before, unchanged
    assert "1 skipped (failed before" in capsys.readouterr().out
