"""Hostile inputs against the index, `search` and the server (issue 15, items 2, 3, 5, 7, 8, 10 and
the smaller ones of the index/search/server area), and the shapes of issue 16 (the index
snapshot, no import cycle inside ``milnce.index``). Every attack is built in ``tmp_path``."""

from __future__ import annotations

import ast
import base64
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from milnce.cli import main
from milnce.errors import UsageError
from milnce.index import Index, IndexDamagedError, index_features
from milnce.windows import WindowSettings

SRC = Path(__file__).resolve().parents[2] / "src" / "milnce"
W = WindowSettings(fps=10.0, num_frames=8, size=32, stride=4)


def windows(n: int = 4, seed: int = 0, *, nan: bool = False) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, 512)).astype(np.float32)
    starts = np.arange(n, dtype=np.float64) * 0.4
    if nan:
        emb[1, 3] = np.nan
    return SimpleNamespace(starts=starts, ends=starts + 0.8, embeddings=emb, duration=float(starts[-1] + 0.8))


def make_index(folder: Path, files: list[Path], roots: list[Path] | None = None) -> Index:
    """A writable index (weights "w1", no model) holding ``files`` as videos (random windows)."""
    idx = Index.create_for(folder, "w1", W, roots=roots if roots is not None else [])
    for i, f in enumerate(files):
        st = os.stat(f)
        idx.add_video(str(f), windows(seed=i), size=st.st_size, mtime=st.st_mtime, content_hash="")
    return idx


# ----- issue 16: the snapshot, no cycles, no fake model ---------------------------------------


def _imports(path: Path) -> set[str]:
    """``milnce.index`` modules a module imports (anywhere: in functions and under TYPE_CHECKING too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            out.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 1:
            out.update(a.name for a in node.names)
    return out


def test_no_import_cycle_and_no_private_reads_inside_index():
    mods = {p.stem: p for p in (SRC / "index").glob("*.py") if p.stem != "__init__"}
    graph = {m: _imports(p) & set(mods) for m, p in mods.items()}

    def visit(m: str, stack: list[str]) -> None:
        assert m not in stack, "import cycle: " + " -> ".join([*stack, m])
        for n in graph[m]:
            visit(n, [*stack, m])

    for m in graph:
        visit(m, [])
    for name, path in mods.items():  # no module reads private members defined in another module
        tree = ast.parse(path.read_text())
        own = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        own |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and node.attr not in own and isinstance(node.value, ast.Name)
                    and node.value.id not in ("os", "torch") and node.attr not in ("_replace", "_asdict")):
                pytest.fail(f"{name}.py reads {ast.unparse(node)}, a private member of another module")
        assert len(path.read_text().splitlines()) <= 600, f"{name}.py is over 600 lines"


def test_snapshot_is_immutable_and_create_needs_no_model(tmp_path):
    f = tmp_path / "a.mp4"
    f.write_bytes(b"x" * 100)
    idx = make_index(tmp_path / "ix", [f], roots=[tmp_path])
    before = idx.snapshot
    assert before.num_live == 4 and len(before.records) == 1
    g = tmp_path / "b.mp4"
    g.write_bytes(b"y" * 50)
    idx.add_video(str(g), windows(6, 1), size=50, mtime=os.stat(g).st_mtime, content_hash="")
    after = idx.snapshot
    assert after is not before and after.num_live == 10 and before.num_live == 4  # the old one is unchanged
    with pytest.raises(TypeError):
        before.records[99] = None  # type: ignore[index]
    q = np.ones(512, np.float32)
    assert idx.search_embeddings(q, k=50, merge=False)[0] and len(before.scores(q)[0]) == 4
    assert idx.meta["weights_id"] == "w1" and idx.roots == [str(tmp_path)]
    idx.close()


# ----- issue 15 item 2: collection roots ------------------------------------------------------


def _feature_file(path: Path, source: Path, *, nan: bool = False) -> None:
    from milnce.extract.store import FORMAT, write_feature_file

    st = os.stat(source)
    w = windows(nan=nan)
    meta = {"format": FORMAT, "settings": {**W.to_dict(), "start": None, "end": None, "pad": "repeat"},
            "weights": "w1", "precision": "fp32",
            "source": {"path": str(source), "size": st.st_size, "mtime_ns": st.st_mtime_ns}}
    write_feature_file(str(path), {"video_embedding": w.embeddings, "start": w.starts, "end": w.ends,
                                   "duration": np.asarray(w.duration)}, meta)


@pytest.fixture(scope="module")
def client_for(model):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from milnce.server import create_app

    def make(index: Index) -> TestClient:
        return TestClient(create_app(index, model, refresh_interval=0), raise_server_exceptions=False)

    return make


def test_crafted_feature_file_cannot_serve_etc_passwd(tmp_path, client_for, capsys):
    vids = tmp_path / "videos"
    vids.mkdir()
    (vids / "ok.mp4").write_bytes(b"video" * 20)
    feats = tmp_path / "features"
    _feature_file(feats / "ok.npz", vids / "ok.mp4")
    _feature_file(feats / "evil.npz", Path("/etc/passwd"))  # its real size and mtime
    # --root is required (before anything is created)
    assert main(["index", "--from-features", str(feats), "--index", str(tmp_path / "ix0"), "--quiet"]) == 2
    assert "--root" in capsys.readouterr().err and not (tmp_path / "ix0").exists()
    # the crafted source is outside the root: not indexed, named in the report
    assert main(["index", "--from-features", str(feats), "--index", str(tmp_path / "ix"), "--root", str(vids),
                 "--quiet", "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert [Path(p).name for p in rep["added"]] == ["ok.mp4"] and rep["failed"][0][0] == "/etc/passwd"
    # and a record that got in anyway (written through the library) is still not served
    with Index.open(tmp_path / "ix", readonly=False) as w:
        st = os.stat("/etc/passwd")
        w.add_video("/etc/passwd", windows(), size=st.st_size, mtime=st.st_mtime, content_hash="")
    with Index.open(tmp_path / "ix") as idx, client_for(idx) as c:
        ids = {Path(v.path).name: v.id for v in idx.videos()}
        r = c.get(f"/api/videos/{ids['passwd']}/file")
        assert r.status_code == 403 and b"root:" not in r.content and r.json()["error"]["status"] == 403
        assert c.get(f"/api/videos/{ids['ok.mp4']}/file").content == b"video" * 20


def test_symlinked_parent_swapped_after_indexing_is_refused(tmp_path, client_for):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "v.mp4").write_bytes(b"A" * 64)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "v.mp4").write_bytes(b"S" * 64)  # same size
    st = os.stat(root / "sub" / "v.mp4")
    os.utime(outside / "v.mp4", ns=(st.st_atime_ns, st.st_mtime_ns))  # and same mtime
    make_index(tmp_path / "ix", [root / "sub" / "v.mp4"], roots=[root]).close()
    with Index.open(tmp_path / "ix") as idx, client_for(idx) as c:
        vid = idx.videos()[0].id
        assert c.get(f"/api/videos/{vid}/file").content == b"A" * 64
        os.rename(root / "sub", root / "sub.old")
        os.symlink(outside, root / "sub")  # the parent folder is now a link out of the root
        r = c.get(f"/api/videos/{vid}/file")
        assert r.status_code == 403 and b"S" not in r.content, r.text
        os.remove(root / "sub")
        os.symlink(root / "sub.old", root / "sub")  # a link inside the root: refused too (no links below a root)
        assert c.get(f"/api/videos/{vid}/file").status_code == 403


def test_old_index_without_roots(tmp_path, client_for, capsys):
    import sqlite3

    vids = tmp_path / "videos"
    (vids / "a").mkdir(parents=True)
    (vids / "a" / "x.mp4").write_bytes(b"X" * 10)
    (vids / "y.mp4").write_bytes(b"Y" * 10)
    make_index(tmp_path / "ix", [vids / "a" / "x.mp4", vids / "y.mp4"]).close()
    con = sqlite3.connect(tmp_path / "ix" / "index.sqlite")
    con.execute("DELETE FROM meta WHERE key='roots'")  # as written before roots were recorded
    con.commit()
    con.close()
    with Index.open(tmp_path / "ix") as idx, client_for(idx) as c:  # the common parent folder
        assert idx.roots == []
        assert all(c.get(f"/api/videos/{v.id}/file").status_code == 200 for v in idx.videos())
    with Index.open(tmp_path / "ix", readonly=False) as w:
        st = os.stat("/etc/passwd")
        w.add_video("/etc/passwd", windows(), size=st.st_size, mtime=st.st_mtime, content_hash="")
    with Index.open(tmp_path / "ix") as idx, client_for(idx) as c:  # common parent "/": nothing is served
        for v in idx.videos():
            r = c.get(f"/api/videos/{v.id}/file")
            assert r.status_code == 403 and "milnce index --index DIR --root" in r.json()["error"]["message"]
    assert main(["index", "--index", str(tmp_path / "ix"), "--root", str(vids)]) == 0
    capsys.readouterr()
    with Index.open(tmp_path / "ix") as idx, client_for(idx) as c:
        ok = {Path(v.path).name: c.get(f"/api/videos/{v.id}/file").status_code for v in idx.videos()}
        assert ok == {"x.mp4": 200, "y.mp4": 200, "passwd": 403}


# ----- item 3: names that are not UTF-8 -------------------------------------------------------


def test_non_utf8_names_in_the_api(tmp_path, client_for):
    folder = tmp_path / "v"
    folder.mkdir()
    raw = os.fsencode(str(folder)) + b"/caf\xe9\x1b[31m.mp4"
    with open(raw, "wb") as f:
        f.write(b"Z" * 32)
    name = os.fsdecode(raw)
    make_index(tmp_path / "ix", [Path(name)], roots=[folder]).close()
    with Index.open(tmp_path / "ix") as idx, client_for(idx) as c:
        vid = idx.videos()[0].id
        listing = c.get("/api/videos")
        assert listing.status_code == 200
        v = listing.json()["videos"][0]
        assert base64.b64decode(v["path_b64"]) == raw and v["path"].endswith("caf\\xe9\x1b[31m.mp4")
        for params in ({"q": "cut", "k": 5}, {"like": f"{vid}@0"}):
            r = c.get("/api/search", params=params)
            assert r.status_code == 200, r.text
        r = c.get("/api/search", params={"q": "cut", "k": 5})
        assert all("path_b64" in m for m in r.json()["results"])
        assert c.get(f"/api/videos/{vid}").status_code == 200
        assert c.get(f"/api/videos/{vid}/file").content == b"Z" * 32


# ----- item 5: non-finite numbers -------------------------------------------------------------


def test_nan_features_refused_naming_the_file(tmp_path):
    vids = tmp_path / "videos"
    vids.mkdir()
    (vids / "a.mp4").write_bytes(b"a" * 10)
    feats = tmp_path / "f"
    _feature_file(feats / "a.npz", vids / "a.mp4", nan=True)
    with pytest.raises(UsageError, match=r"a\.npz.*NaN"):
        index_features(feats, tmp_path / "ix", roots=[vids], progress=False)
    with Index.open(tmp_path / "ix") as idx:
        assert idx.num_videos == 0
    w = Index.open(tmp_path / "ix", readonly=False)
    with pytest.raises(UsageError, match="NaN"):  # the library's write path guards the same
        w.add_video(str(vids / "a.mp4"), windows(nan=True), size=10, mtime=0.0, content_hash="")
    bad = windows()
    bad.starts[0] = np.inf
    with pytest.raises(UsageError):
        w.add_video(str(vids / "a.mp4"), bad, size=10, mtime=0.0, content_hash="")
    assert w.num_rows == 0
    w.close()


# ----- item 8: a vector file truncated under the server ---------------------------------------


def test_truncated_store_answers_503_not_sigbus(tmp_path, client_for):
    f = tmp_path / "a.mp4"
    f.write_bytes(b"a")
    make_index(tmp_path / "ix", [f], roots=[tmp_path]).close()
    with Index.open(tmp_path / "ix") as idx, client_for(idx) as c:
        assert c.get("/api/search", params={"q": "cut"}).status_code == 200
        os.truncate(idx.snapshot.path("vectors"), 100)
        for url in ("/api/search?q=cut", f"/api/videos/{idx.videos()[0].id}/curve?q=cut"):
            r = c.get(url)
            assert r.status_code == 503 and "index damaged" in r.json()["error"]["message"], r.text
        assert c.get("/healthz").json()["status"] == "degraded"
        with pytest.raises(IndexDamagedError):
            idx.search_embeddings(np.ones(512, np.float32))


def test_serve_restart_comes_back_after_a_fatal_signal(tmp_path, capsys):
    from milnce.commands.serve import supervise

    count = tmp_path / "count"
    child = textwrap.dedent(f"""
        import os, signal, sys
        n = int(open({str(count)!r}).read()) if os.path.exists({str(count)!r}) else 0
        open({str(count)!r}, "w").write(str(n + 1))
        if n < 2:
            os.kill(os.getpid(), signal.SIGBUS)
    """)
    assert supervise([sys.executable, "-c", child], pause_s=0.0) == 0
    assert count.read_text() == "3"
    err = capsys.readouterr().err
    assert err.count("died (signal SIGBUS); restarting") == 2
    assert supervise([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGBUS)"],
                     max_restarts=2, pause_s=0.0) == 1  # gives up


# ----- item 10 and the smaller ones -----------------------------------------------------------


def test_odd_window_size_refused_before_the_folder_exists(tmp_path, model):
    from milnce.index import build_index

    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.mp4").write_bytes(b"x")
    with pytest.raises(UsageError, match="even"):
        build_index([tmp_path / "v"], tmp_path / "ix", model, size=63, num_frames=8, progress=False)
    assert not (tmp_path / "ix").exists()


def test_host_check_parses_the_whole_header():
    from milnce.server.app import host_name

    assert host_name("127.0.0.1:8770") == "127.0.0.1" and host_name("[::1]:80") == "[::1]"
    assert host_name("LOCALHOST") == "localhost"
    for evil in ("127.0.0.1:8770@evil.com", "evil.com#127.0.0.1:1", "127.0.0.1:80:80", "127.0.0.1:abc",
                 "a b", "[::1]x", "127.0.0.1/x"):
        assert host_name(evil) == "", evil


def test_show_path_escapes_control_characters():
    from milnce.index.layout import show_path

    assert show_path("a\x1b[2Jb\nc") == "a\\x1b[2Jb\\x0ac"
    assert show_path(os.fsdecode(b"x\xffy")) == "x\\xffy"


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    f = d / "a.mp4"
    f.write_bytes(b"a")
    make_index(d / "ix", [f], roots=[d]).close()
    return d / "ix"


def test_queries_file_rules_and_csv_failures(tiny_index, tmp_path, model, monkeypatch, capsys):
    monkeypatch.setattr("milnce.commands.search.model_from_args", lambda args: model)
    monkeypatch.setattr("milnce.index.Index.check_model", lambda self, m: None)
    qf = tmp_path / "q.txt"
    qf.write_text("# a comment, not a query\ncut\n\nqqqzzz\n")
    assert main(["search", "--index", str(tiny_index), "--queries-file", str(qf), "--csv"]) == 1
    out, err = capsys.readouterr()
    assert {line.split(",")[0] for line in out.splitlines()[1:]} == {"cut"}  # no row for the comment
    assert "qqqzzz" in err and "failed" in err  # the failed query is named on stderr
    assert main(["search", "--index", str(tiny_index), "--queries-file", str(qf), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert [r["query"] for r in doc["results"]] == ["cut", "qqqzzz"]
    for bad in ("/dev/zero", str(tmp_path)):
        assert main(["search", "--index", str(tiny_index), "--queries-file", bad]) == 2
        assert "not a text file" in capsys.readouterr().err
    long = tmp_path / "long.txt"
    long.write_bytes(b"a" * 200_000)
    assert main(["search", "--index", str(tiny_index), "--queries-file", str(long)]) == 2
    assert "longer than" in capsys.readouterr().err
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"cut\n\x00\x00\n")
    assert main(["search", "--index", str(tiny_index), "--queries-file", str(binary)]) == 2


@pytest.mark.slow
def test_many_queries_run_in_bounded_memory(tiny_index, tmp_path, checkpoint):
    """A 10,000-line queries file under RLIMIT_AS (set once the model is loaded): memory does not
    grow with the number of queries (before, ~250 KB a query: 2.5 GB here, past the 600 MB allowed)."""
    qf = tmp_path / "q.txt"
    qf.write_text("".join(f"cut {i % 7}\n" for i in range(10_000)))
    script = textwrap.dedent(f"""
        import resource, sys
        import milnce
        import milnce.commands.search as cs
        from milnce.index import Index
        model = milnce.load_model({str(checkpoint[0])!r}, {str(checkpoint[1])!r}, download=False)
        cs.model_from_args = lambda args: model
        Index.check_model = lambda self, m: None
        size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (size + (600 << 20), resource.RLIM_INFINITY))
        from milnce.cli import main
        sys.exit(main(["search", "--index", {str(tiny_index)!r}, "--queries-file", {str(qf)!r}, "--csv", "-k", "1"]))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=900)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert r.stdout.count(b"\n") == 10_001
