"""Search results you can trust (issue 10): moments independent of k, readable scores, query by
example, curves, verified ANN files, damaged rows refused, odd file names, exit codes, CSV,
removal, and the search page's command examples (docs/search.md) run as written."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import shlex
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from milnce.cli import main
from milnce.index import (
    Index,
    IndexDamagedError,
    IndexFolderError,
    build_index,
    find_videos,
    moment_margin,
    video_moments,
)
from milnce.localize import best_moments
from tests.cli.test_search import SMALL, SMALL_ARGS, make_video, synthetic_index

pytestmark = pytest.mark.usefixtures("reuse_model")  # CLI commands reuse the loaded model


@pytest.fixture(scope="module")
def vids(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("trust_videos")
    make_video(d / "red.mp4", 3.0, (220, 30, 30), 1)
    make_video(d / "green.mp4", 4.0, (30, 200, 40), 2)
    make_video(d / "blue.mp4", 2.5, (30, 40, 220), 3)
    return d


@pytest.fixture(scope="module")
def small_index(tmp_path_factory, vids, model) -> Path:
    d = tmp_path_factory.mktemp("trust_ix") / "ix"
    build_index([vids], d, model, progress=False, **SMALL)
    return d


def key(m):
    return (m.video_id, m.start, m.end, m.score)


# --------------------------------------------------------------------------------------------
# 1. Moments: one definition, independent of k


def test_crafted_curve_gives_the_documented_moments():
    s = np.array([0, 1, 5, 4.8, 4.7, 2, 0, 9, 8.95, 3, 0], np.float32)
    assert moment_margin(s) == pytest.approx(0.1 * (9 - 3))  # 0.1 x (max - median)
    got = [(a, b, p, round(sc, 3)) for a, b, p, sc in video_moments(s)]
    assert got == [(7, 8, 7, 9.0), (2, 4, 2, 5.0), (9, 9, 9, 3.0), (5, 5, 5, 2.0), (1, 1, 1, 1.0),
                   (0, 0, 0, 0.0), (6, 6, 6, 0.0), (10, 10, 10, 0.0)]
    # a flat curve is one moment; an empty one none; localize uses the same moments
    assert video_moments(np.ones(5, np.float32)) == [(0, 4, 0, 1.0)]
    assert video_moments(np.zeros(0, np.float32)) == []
    starts = np.arange(len(s)) * 1.0
    assert best_moments(starts, starts + 2, s, k=3) == [(7.0, 10.0, 9.0), (2.0, 6.0, 5.0), (9.0, 11.0, 3.0)]
    assert best_moments(starts, starts + 2, s, k=2, merge=False) == [(7.0, 9.0, 9.0), (8.0, 10.0, pytest.approx(8.95))]


def _all_moments_brute_force(idx: Index, q: np.ndarray) -> list[tuple]:
    out = []
    for v in idx.videos():
        starts, ends, emb = idx.windows(v.id)
        sc = emb.astype(np.float64) @ np.asarray(q, np.float64)  # the exact sums (float32 BLAS rounds by block)
        for a, b, _p, s in video_moments(sc):
            out.append((v.id, float(starts[a]), float(ends[b]), float(s)))
    out.sort(key=lambda t: (-t[3], t[0], t[1]))
    return out


@pytest.mark.parametrize("exact", [True, "scan"])
def test_k_gives_a_prefix_of_one_ranking(tmp_path, exact):
    idx = synthetic_index(tmp_path / "ix", videos=12, windows=30)
    rng = np.random.default_rng(5)
    for q in (np.asarray(idx._vectors[7]) + 0.3 * rng.standard_normal(512).astype(np.float32),
              rng.standard_normal(512).astype(np.float32)):
        full = idx.search_embeddings(q, k=len(idx), exact=exact)[0]
        brute = _all_moments_brute_force(idx, q)
        assert len(full) == len(brute)
        for m, b in zip(full, brute):
            assert (m.video_id, m.start, m.end) == b[:3] and m.score == pytest.approx(b[3], rel=1e-5)
        for k in (1, 2, 3, 5, 7, 10, 13, 20, 40, 80):
            assert [key(m) for m in idx.search_embeddings(q, k=k, exact=exact)[0]] == [key(m) for m in full[:k]]
        # moments partition every video's windows
        for v in idx.videos():
            starts, ends, _ = idx.windows(v.id)
            covered = []
            for m in (m for m in full if m.video_id == v.id):
                a, b = int(np.flatnonzero(starts == m.start)[0]), int(np.flatnonzero(ends == m.end)[0])
                covered.extend(range(a, b + 1))
            assert sorted(covered) == list(range(v.num_windows))
        # one per video = each video's first moment in the ranking
        first: dict[int, tuple] = {}
        for m in full:
            first.setdefault(m.video_id, key(m))
        for k in (1, 4, 12):
            per_video = idx.search_embeddings(q, k=k, by_video=True, exact=exact)[0]
            assert [key(m) for m in per_video] == list(first.values())[:k]
        assert idx.video_moments(full[0].video_id, q)[0].start == full[0].start
    idx.close()


def test_k_prefix_through_the_screened_scan(tmp_path):
    """>= 20k windows: the int8-screened exact search gives the same fixed ranking."""
    idx = synthetic_index(tmp_path / "ix", videos=42, windows=500, seed=2)
    rng = np.random.default_rng(9)
    q = np.asarray(idx._vectors[1234]) + 0.2 * rng.standard_normal(512).astype(np.float32)
    ref = idx.search_embeddings(q, k=60, exact="scan")[0]
    for k in (1, 10, 25, 60):
        assert [key(m) for m in idx.search_embeddings(q, k=k, exact=True)[0]] == [key(m) for m in ref[:k]]
    idx.close()


def test_readable_scores_and_curve(small_index, model):
    with Index.open(small_index, model) as idx:
        res = idx.search("red square", k=len(idx))
        q = model.encode_text(["red square"]).numpy()[0]
        pct = [m.percentile for m in res]
        assert all(0 <= p <= 100 for p in pct) and pct == sorted(pct, reverse=True)
        for m in res[:3]:
            starts, _, emb = idx.windows(m.video_id)
            v = emb[int(np.flatnonzero(starts == m.peak)[0])]
            assert m.cosine == pytest.approx(float(v @ q) / (np.linalg.norm(v) * np.linalg.norm(q)), rel=1e-4)
            assert -1 <= m.cosine <= 1 and m.start <= m.peak < m.end
        assert set(res[0].to_dict()) >= {"score", "cosine", "percentile", "peak"}
        starts, ends, scores = idx.curve(res[0].video_id, "red square")
        s2, e2, emb = idx.windows(res[0].video_id)
        np.testing.assert_allclose(scores, emb @ q, rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(starts, s2)
        assert idx.curve(res[0].video_id, q)[2] == pytest.approx(scores)
        with pytest.raises(KeyError):
            idx.curve(10**6, q)
        with pytest.raises(ValueError, match="vocabulary"):
            idx.curve(res[0].video_id, "xyzzy plugh")


def test_search_like(small_index, vids, model):
    with Index.open(small_index, model) as idx:
        red = idx.video_by_path(vids / "red.mp4")
        starts, _, emb = idx.windows(red.id)
        res = idx.search_like(red.id, start=starts[1] + 0.1, k=5)
        assert res and all(m.video_id != red.id for m in res)
        want = idx.search_embeddings(emb[1], k=len(idx))[0]
        assert [key(m) for m in res] == [key(m) for m in want if m.video_id != red.id][:5]
        me = idx.search_like(str(vids / "red.mp4"), start=starts[1], k=1, include_self=True)[0]
        assert key(me) == key(want[0])  # the example's own video is kept with include_self
        # a video that is not in the index: its window is embedded with the index's settings
        other = make_video(vids.parent / "other" / "x.mp4", 2.0, (200, 200, 30), 9)
        res = idx.search_like(other, start=0.0, k=3)
        ve = model.encode_video_file(other, **SMALL)
        np.testing.assert_allclose(idx.like_embedding(other, 0.0)[0], ve.embeddings[0], rtol=1e-4, atol=1e-4)
        assert len(res) == 3
        with pytest.raises(ValueError):
            idx.search_like(red.id, start=float("nan"))


# --------------------------------------------------------------------------------------------
# 3. Reliability


def test_damaged_ann_file_falls_back_to_exact_and_is_rebuilt(tmp_path, caplog):
    pytest.importorskip("faiss")
    idx = synthetic_index(tmp_path / "ix", videos=20, windows=50)
    assert idx.ann_status()["state"] == "not built"
    idx.build_ann()
    assert idx.ann_status()["state"] == "ok"
    q = np.asarray(idx._vectors[3])
    exact = idx.search_embeddings(q, k=5, exact=True)[0]
    idx.close()
    ann_file = next((tmp_path / "ix").glob("ann-*.faiss"))
    os.truncate(ann_file, 500)
    with caplog.at_level(logging.WARNING, logger="milnce.index"), Index.open(tmp_path / "ix") as r:
        st = r.ann_status()
        assert st["state"] == "damaged" and st["reason"]
        assert [key(m) for m in r.search_embeddings(q, k=5)[0]] == [key(m) for m in exact]
    assert "damaged" in caplog.text and "exactly" in caplog.text
    with Index.open(tmp_path / "ix", readonly=False) as w:  # what `milnce index --ann` does
        w.build_ann()
        assert w.ann_status()["state"] == "ok"
    ann_file.unlink()
    with Index.open(tmp_path / "ix") as r:
        assert r.ann_status()["state"] == "missing" and r.ann() is None


def test_index_ann_small_index_stays_exact_and_rebuilds_damaged(tmp_path, vids, wargs, capsys):
    pytest.importorskip("faiss")
    ix = tmp_path / "ix"
    assert main(["index", str(vids / "red.mp4"), "--index", str(ix), "--ann", "--quiet", *SMALL_ARGS, *wargs]) == 0
    out = capsys.readouterr().out
    assert "ANN: not built" in out and "fewer than 50,000" in out
    assert not list(ix.glob("ann-*")) and Index.open(ix).ann_status()["state"] == "not built"
    args = ["index", str(vids / "red.mp4"), "--index", str(ix), "--ann", "--ann-min-windows", "1", "--quiet", "--json",
            *wargs]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)["ann"]
    os.truncate(next(ix.glob("ann-*.faiss")), 500)
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)["ann"]
    assert again["built"] > first["built"]  # rebuilt, not "exists, recall 1.000"
    with Index.open(ix) as r:
        assert r.ann_status()["state"] == "ok"


def _damage(ix: Path, sql: str, *params) -> None:
    con = sqlite3.connect(ix / "index.sqlite")
    con.execute(sql, params)
    con.commit()
    con.close()


@pytest.mark.parametrize("sql, params, what", [
    ("UPDATE videos SET row_start=1000 WHERE id=(SELECT min(id) FROM videos)", (), "claims rows"),
    ("UPDATE videos SET row_start=(SELECT min(row_start) FROM videos) WHERE id=(SELECT max(id) FROM videos)", (), "share"),
    ("UPDATE videos SET num_windows=0 WHERE id=(SELECT min(id) FROM videos)", (), "has rows"),
    ("UPDATE meta SET value=? WHERE key='settings'", ("{fps: 10",), "not valid JSON"),
    ("UPDATE meta SET value=? WHERE key='settings'", (json.dumps({"fps": 1e-9, "num_frames": 8}),), "window settings"),
])
def test_damaged_rows_and_settings_are_refused(tmp_path, wargs, capsys, sql, params, what):
    synthetic_index(tmp_path / "ix", videos=3, windows=5).close()
    _damage(tmp_path / "ix", sql, *params)
    with pytest.raises(IndexDamagedError, match=what) as ei:
        Index.open(tmp_path / "ix")
    assert str(ei.value).startswith("index damaged:") and isinstance(ei.value, IndexFolderError)
    assert main(["search", "--index", str(tmp_path / "ix"), "red", *wargs]) == 2
    err = capsys.readouterr().err
    assert err.startswith("milnce: error: index damaged:") and len(err.strip().splitlines()) == 1


def test_non_utf8_file_name_is_indexed(tmp_path, wargs, capsys):
    if os.fsencode("x") != b"x" or os.name == "nt":
        pytest.skip("POSIX bytes file names only")
    d = tmp_path / "v"
    make_video(d / "plain.mp4", 2.0, (220, 30, 30), 1)
    raw = os.path.join(os.fsencode(str(d)), b"caf\xe9.mp4")
    os.rename(make_video(d / "tmp.mp4", 2.0, (30, 30, 220), 4), raw)
    ix = tmp_path / "ix"
    rc = main(["index", str(d), "--index", str(ix), "--quiet", *SMALL_ARGS, *wargs])
    err = capsys.readouterr().err
    assert rc in (0, 1) and "Traceback" not in err
    with Index.open(ix) as r:
        names = {os.fsencode(v.path) for v in r.videos()} | {os.fsencode(p) for p, _ in r.errors()}
        assert raw in names  # indexed (or recorded as failed) under its exact name
        if rc == 0:
            assert any(os.path.isfile(v.path) and os.fsencode(v.path) == raw for v in r.videos())
    assert main(["search", "--index", str(ix), "blue ball", "-k", "5", *wargs]) == 0
    assert "caf\\xe9.mp4" in capsys.readouterr().out or rc == 1
    # a second run sees it unchanged
    assert main(["index", str(d), "--index", str(ix), "--quiet", "--json", *SMALL_ARGS, *wargs]) == rc
    assert json.loads(capsys.readouterr().out)["unchanged"] == (2 if rc == 0 else 1)


def test_unreadable_folder_is_reported(tmp_path, vids, wargs, capsys, monkeypatch):
    d = tmp_path / "v"
    (d / "locked").mkdir(parents=True)
    make_video(d / "ok.mp4", 2.0, (220, 30, 30), 1)
    locked = str(d / "locked")
    real = os.scandir

    def scandir(path="."):  # as for a chmod-000 folder (root can read those, so simulate it)
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    ix = tmp_path / "ix"
    assert main(["index", str(d), "--index", str(ix), "--quiet", *SMALL_ARGS, *wargs]) == 1
    err = capsys.readouterr().err
    assert "locked" in err and "Permission denied" in err
    assert "locked" in (ix / "errors.log").read_text()
    seen = []
    assert find_videos([d], on_error=lambda p, r: seen.append((p, r))) == [str(d / "ok.mp4")]
    assert seen and seen[0][0] == locked


def test_disk_full_while_creating_an_index_is_one_line(tmp_path, vids, wargs, capsys, monkeypatch):
    import milnce.index.store as store

    def full(*a, **k):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store.sqlite3, "connect", full)
    rc = main(["index", str(vids / "red.mp4"), "--index", str(tmp_path / "ix"), "--quiet", *SMALL_ARGS, *wargs])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("milnce: error:") and "disk is full" in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------
# 2, 4, 5. Validation, exit codes, ~


def test_localize_tiny_fps_is_refused(vids, wargs, capsys):
    assert main(["localize", str(vids / "red.mp4"), "red", "--fps", "1e-9", *wargs]) == 2
    err = capsys.readouterr().err
    assert "fps" in err and len(err.strip().splitlines()) == 1


def test_index_exit_code_1_and_failed_path_once(tmp_path, vids, wargs, capsys):
    d = tmp_path / "v"
    d.mkdir()
    make_video(d / "ok.mp4", 2.0, (220, 30, 30), 1)
    (d / "broken.mp4").write_bytes(b"not a video" * 30)
    assert main(["index", str(d), "--index", str(tmp_path / "ix"), "--quiet", *SMALL_ARGS, *wargs]) == 1
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if "broken.mp4" in ln)
    assert line.count("broken.mp4") == 1, line
    # the second run skips it (failed before, said in the summary), lists it again with the same
    # reason and exits 1 while it keeps failing (as extract and eval do)
    assert main(["index", str(d), "--index", str(tmp_path / "ix"), "--quiet", *SMALL_ARGS, *wargs]) == 1
    cap = capsys.readouterr()
    assert "failed before" in cap.out
    assert [ln for ln in cap.err.splitlines() if "broken.mp4" in ln] == [line]


def test_tilde_is_expanded(tmp_path, vids, model, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "videos").mkdir()
    make_video(tmp_path / "videos" / "a.mp4", 2.0, (220, 30, 30), 1)
    assert find_videos(["~/videos"]) == [str(tmp_path / "videos" / "a.mp4")]
    rep = build_index(["~/videos"], "~/my_index", model, progress=False, **SMALL)
    assert rep.failed == [] and len(rep.added) == 1 and (tmp_path / "my_index" / "index.sqlite").is_file()
    with Index.open("~/my_index", model) as idx:
        assert idx.num_videos == 1 and idx.video_by_path("~/videos/a.mp4") is not None


# --------------------------------------------------------------------------------------------
# 6. CLI features


def test_cli_like_queries_file_csv_and_remove(tmp_path, small_index, vids, wargs, capsys, monkeypatch):
    qf = tmp_path / "q.txt"
    qf.write_text("red square\n\n a blue ball \n")
    assert main(["search", "--index", str(small_index), "--queries-file", str(qf), "--csv", "-k", "3", *wargs]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["query"] for r in rows} == {"red square", "a blue ball"}
    assert set(rows[0]) >= {"rank", "path", "start", "end", "score", "cosine", "percentile"}
    monkeypatch.setattr("sys.stdin", io.StringIO("green door\n"))
    assert main(["search", "--index", str(small_index), "--queries-file", "-", "--format", "json", *wargs]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["query"] for r in out["results"]] == ["green door"] and out["ann"] == "not built"
    with Index.open(small_index) as idx:
        red = idx.video_by_path(vids / "red.mp4")
    assert main(["search", "--index", str(small_index), "--like", f"{vids / 'red.mp4'}@0:01", "--json", *wargs]) == 0
    res = json.loads(capsys.readouterr().out)["results"][0]
    assert res["query"].startswith("like ") and res["moments"]
    assert all(m["video_id"] != red.id for m in res["moments"])
    assert main(["search", "--index", str(small_index), "--like", f"{red.id}@1.5", *wargs]) == 0
    assert "like " in capsys.readouterr().out
    assert main(["search", "--index", str(small_index), "--like", "999999", *wargs]) == 2
    assert main(["search", "--index", str(small_index), *wargs]) == 2
    assert "nothing to search" in capsys.readouterr().err
    # removal (on a copy)
    import shutil

    ix = tmp_path / "ix"
    shutil.copytree(small_index, ix)
    assert main(["remove", "--index", str(ix), str(vids / "red.mp4"), *wargs[:0]]) == 0
    assert "removed" in capsys.readouterr().out
    with Index.open(ix) as idx:
        assert idx.num_videos == 2 and idx.video_by_path(vids / "red.mp4") is None
    assert main(["remove", "--index", str(ix), str(vids / "red.mp4")]) == 2
    assert "not in the index" in capsys.readouterr().err


def test_localize_shows_progress(vids, wargs, capsys):
    assert main(["localize", str(vids / "green.mp4"), "green door", *SMALL_ARGS, *wargs]) == 0
    err = capsys.readouterr().err
    assert "%" in err or "it/s" in err or "s/it" in err


# --------------------------------------------------------------------------------------------
# 7. The search page's command examples (docs/search.md) run as written


def _docs_commands(page: str) -> list[str]:
    """The ``milnce ...`` lines of a documentation page's introduction (before its first section)."""
    text = (Path(__file__).resolve().parents[2] / "docs" / page).read_text()
    body = text.split("\n## ", 1)[0]
    cmds = []
    for line in body.splitlines():
        s = line.strip()
        if s.startswith("milnce ") and not s.startswith("milnce serve"):
            cmds.append(re.sub(r"\s+#.*$", "", s))
    return cmds


def test_readme_search_examples_run_as_written(tmp_path, vids, wargs, monkeypatch, capsys):
    """Every ``milnce ...`` line at the top of docs/search.md (its command summary), on generated
    videos (``~/videos`` and ``talk.mp4``) with the random-weights checkpoint."""
    home = tmp_path / "home"
    (home / "videos").mkdir(parents=True)
    for name in ("red.mp4", "green.mp4", "blue.mp4"):
        (home / "videos" / name).write_bytes((vids / name).read_bytes())
    (home / "videos" / "old.mp4").write_bytes((vids / "red.mp4").read_bytes())
    (home / "talk.mp4").write_bytes((vids / "green.mp4").read_bytes())
    (home / "queries.txt").write_text("cut tomato\npour water\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    cmds = _docs_commands("search.md")
    assert len(cmds) >= 8
    ran = 0
    for line in cmds:
        argv = [os.path.expanduser(a) if a.startswith("~") else a for a in shlex.split(line)][1:]
        if argv[0] == "demo" and "--videos" not in argv:
            print(f"skipped (needs the network): {line}")
            continue
        argv = [str(home / "videos") if a == "DIR" else a for a in argv]
        argv = [a for a in argv if a not in ("s3d_howto100m.pth", "s3d_dict.npy", "--weights", "--vocab")]
        small = [] if argv[0] in ("search", "remove") else SMALL_ARGS if "--index" in argv or argv[0] in (
            "localize", "demo") else []
        if argv[0] == "index" and (home / "my_index").exists():
            small = []  # an existing index keeps its own settings
        extra = [] if argv[0] == "remove" else [*small, *wargs]
        rc = main([*argv, *extra])
        capsys.readouterr()
        assert rc == 0, line
        ran += 1
    assert ran >= 8
