"""``milnce recipes``, ``milnce pack`` end to end (``milnce.commands.recipes``): the CLI run through
``main(argv)`` or a subprocess."""

from __future__ import annotations

import glob
import json
import os
import pickle
import resource
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from milnce.cli import main
from milnce.errors import UsageError
from milnce.extract.pack import MAX_ID_LINE, PICKLE_PROTOCOL, pack_videoclip
from milnce.extract.recipe_store import RecipeLayout
from milnce.recipes import RECIPES, get_recipe
from milnce.video.npyfile import NpyFileError, npy_header, read_npy
from video_fixtures import ALLOWED_GLOBALS, pickle_opcodes


def managed_folder(root: Path, recipe: str, rows: dict[str, int], seed: int = 0) -> Path:
    """A feature folder as ``milnce extract --recipe`` writes it (manifest, ``.npy`` + sidecars)."""
    r = get_recipe(recipe)
    layout = RecipeLayout(r)
    layout.prepare(str(root))
    rng = np.random.default_rng(seed)
    for vid, n in rows.items():
        x = rng.standard_normal((n, r.dim)).astype(np.float32)
        layout.write(str(root / f"{vid}.npy"), {r.feature: x}, {"settings": {}})
    return root


def refused(capsys, argv: list[str], *words: str) -> str:
    """``main(argv)`` exits 2 with one error line holding ``words`` (no traceback)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if "error:" in x]
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def huge_header(path: Path, shape: tuple[int, ...] = (10**11, 512)) -> None:
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f2", "fortran_order": False, "shape": shape})
        f.write(b"\0" * 64)


# --------------------------------------------------------------------------- bounded reads


def test_ids_from_a_device_or_endless_line_refused(tmp_path, capsys):
    d = managed_folder(tmp_path / "f", "videoclip", {"a": 2})
    out = str(tmp_path / "m")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused(capsys, ["pack", "videoclip", str(d), out, "--ids", "/dev/zero"], "/dev/zero", "device")
    zeros = tmp_path / "zeros"
    zeros.write_bytes(b"\0" * (MAX_ID_LINE * 4))  # /dev/zero as a file: one endless line of NULs
    refused(capsys, ["pack", "videoclip", str(d), out, "--ids", str(zeros)], "longer than")
    zeros.write_bytes(b"a\n\0\0\n")
    refused(capsys, ["pack", "videoclip", str(d), out, "--ids", str(zeros)], "line 2", "NUL")
    zeros.write_bytes(b"a\n\xff\xfe\n")
    refused(capsys, ["pack", "videoclip", str(d), out, "--ids", str(zeros)], "UTF-8")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing grew
    assert not os.path.exists(out)


def test_npy_header_checked_against_the_file_size_before_allocating(tmp_path, capsys):
    d = managed_folder(tmp_path / "f", "videoclip", {"a": 2})
    huge_header(d / "a.npy")
    with pytest.raises(NpyFileError, match="header says shape"):
        read_npy(str(d / "a.npy"))
    with pytest.raises(NpyFileError, match="header says shape"):
        npy_header(str(d / "a.npy"))
    refused(capsys, ["pack", "videoclip", str(d), str(tmp_path / "m")], "a.npy", "header says shape (100000000000, 512)")
    # the recipe layout's own checks see it as damaged (redone), not a MemoryError
    layout = RecipeLayout(get_recipe("videoclip"))
    assert layout.read_meta(str(d / "a.npy")) is None
    assert "header says" in (layout.verify(str(d / "a.npy")) or "")
    good = np.ones((2, 512), np.float16)
    np.save(d / "a.npy", good)
    with open(d / "a.npy", "ab") as f:
        f.write(b"extra")  # a longer file than its header says
    with pytest.raises(NpyFileError, match="header says"):
        read_npy(str(d / "a.npy"))
    np.save(d / "o.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(NpyFileError, match="Python objects"):
        read_npy(str(d / "o.npy"))


# --------------------------------------------------------------------------- what is packed


@pytest.mark.parametrize("consumer,width", [("videoclip", 1024), ("univl", 512)])
def test_another_width_refused(tmp_path, capsys, consumer, width):
    d = tmp_path / "f"
    d.mkdir()
    np.save(d / "a.npy", np.ones((2, width), np.float16))  # a folder of plain .npy files (no manifest)
    refused(capsys, ["pack", consumer, str(d), str(tmp_path / "out")], "a.npy", f"shape (2, {width})")
    assert not os.path.exists(tmp_path / "out")


def test_mixed_widths_refused_not_a_traceback(tmp_path, capsys):
    d = managed_folder(tmp_path / "f", "videoclip", {"a": 2, "b": 1})
    np.save(d / "b.npy", np.ones((1, 1024), np.float16))  # replaced by a univl-wide array
    refused(capsys, ["pack", "videoclip", str(d), str(tmp_path / "m")], "b.npy", "1024")


def test_nan_values_refused(tmp_path, capsys):
    d = tmp_path / "f"
    d.mkdir()
    x = np.ones((3, 1024), np.float16)
    x[1, 5] = np.nan
    np.save(d / "a.npy", x)
    refused(capsys, ["pack", "univl", str(d), str(tmp_path / "u.pickle")], "a.npy", "NaN")
    assert not os.path.exists(tmp_path / "u.pickle")


def test_sidecars_are_read(tmp_path, capsys):
    d = managed_folder(tmp_path / "f", "univl", {"a": 2, "b": 3})
    out = str(tmp_path / "u.pickle")
    side = d / ".milnce" / "b.json"
    meta = json.loads(side.read_text())
    side.unlink()
    refused(capsys, ["pack", "univl", str(d), out], "b.npy", "no sidecar")
    side.write_text(json.dumps({**meta, "rows": 7}))
    refused(capsys, ["pack", "univl", str(d), out], "b.npy", "does not match its sidecar")
    side.write_text(json.dumps(meta))
    raw = bytearray((d / "b.npy").read_bytes())
    raw[200] ^= 0x01  # one value changed: still finite, same shape
    (d / "b.npy").write_bytes(bytes(raw))
    refused(capsys, ["pack", "univl", str(d), out], "b.npy", "does not match its sidecar")
    side.write_text("{not json")
    refused(capsys, ["pack", "univl", str(d), out], "b.json", "unreadable sidecar")
    assert not os.path.exists(out)
    v = managed_folder(tmp_path / "v", "videoclip", {"a": 1})
    refused(capsys, ["pack", "univl", str(v), out], "--recipe videoclip", "pack univl")


def test_duplicate_and_unsafe_ids_refused(tmp_path, capsys):
    d = managed_folder(tmp_path / "f", "videoclip", {"a": 2, "b": 1})
    ids = tmp_path / "ids.txt"
    ids.write_text("a\nb\na\na\n")
    refused(capsys, ["pack", "videoclip", str(d), str(tmp_path / "m"), "--ids", str(ids)], "'a' (3 times)")
    (tmp_path / "x.npy").write_bytes((d / "a.npy").read_bytes())
    with pytest.raises(UsageError, match="not video ids"):
        pack_videoclip(str(d), str(tmp_path / "m"), ids=["../x"])
    assert not os.path.exists(tmp_path / "m")


# --------------------------------------------------------------------------- an existing OUT


def test_univl_refuses_an_existing_file_unless_overwrite(tmp_path, capsys):
    d = managed_folder(tmp_path / "f", "univl", {"a": 2})
    out = tmp_path / "u.pickle"
    out.write_bytes(b"precious")
    refused(capsys, ["pack", "univl", str(d), str(out)], "exists", "--overwrite")
    assert out.read_bytes() == b"precious"
    assert main(["pack", "univl", str(d), str(out), "--overwrite"]) == 0
    with open(out, "rb") as f:
        assert list(pickle.load(f)) == ["a"]


def test_videoclip_refuses_existing_shards_unless_overwrite(tmp_path, capsys):
    d = managed_folder(tmp_path / "f", "videoclip", {"a": 2, "b": 1, "c": 3})
    m = tmp_path / "m"
    assert main(["pack", "videoclip", str(d), str(m), "--shard-size", "1"]) == 0
    assert (m / "train_2_data.npy").exists()
    refused(capsys, ["pack", "videoclip", str(d), str(m)], "7 file(s) of split 'train'", "--overwrite")
    assert main(["pack", "videoclip", str(d), str(m), "--split", "val"]) == 0  # another split
    assert main(["pack", "videoclip", str(d), str(m), "--overwrite"]) == 0  # one shard now
    assert sorted(n for n in os.listdir(m) if n.startswith("train")) == [
        "train_0_data.npy", "train_0_starts.npy", "train_meta.pkl"]
    assert np.load(m / "train_0_starts.npy").tolist() == [0, 2, 3, 6]
    with open(m / "train_meta.pkl", "rb") as f:
        assert pickle.load(f) == {0: ["a", "b", "c"]}


def test_a_refusal_half_way_leaves_no_shards(tmp_path, capsys):
    d = managed_folder(tmp_path / "f", "videoclip", {"a": 2, "b": 1, "c": 3})
    x = np.ones((3, 512), np.float16)
    x[0, 0] = np.inf
    np.save(d / "c.npy", x)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "notes.txt").write_text("mine")
    refused(capsys, ["pack", "videoclip", str(d), str(tmp_path / "m"), "--shard-size", "1"], "c.npy", "infinite")
    assert os.listdir(tmp_path / "m") == ["notes.txt"]


@pytest.fixture()
def packed(tmp_path):
    u = managed_folder(tmp_path / "u", "univl", {"va": 3, "vb": 1, "vc": 2})
    v = managed_folder(tmp_path / "v", "videoclip", {"xa": 2, "xb": 4})
    assert main(["pack", "univl", str(u), str(tmp_path / "u.pickle")]) == 0
    assert main(["pack", "videoclip", str(v), str(tmp_path / "m"), "--shard-size", "1"]) == 0
    want = {k: np.load(u / f"{k}.npy") for k in ("va", "vb", "vc")}
    return tmp_path / "u.pickle", tmp_path / "m" / "train_meta.pkl", want


def test_opcodes_name_only_numpy_ndarray_and_dtype(packed):
    univl, meta, _ = packed
    proto, names = pickle_opcodes(univl.read_bytes())
    assert proto == PICKLE_PROTOCOL == 4 and names == ALLOWED_GLOBALS
    proto, names = pickle_opcodes(meta.read_bytes())
    assert proto <= 4 and names == set()  # only strings, ints, lists and a dict


def test_loads_here_without_warnings(packed):
    univl, meta, want = packed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with open(univl, "rb") as f:
            got = pickle.load(f)
        with open(meta, "rb") as f:
            assert pickle.load(f) == {0: ["xa"], 1: ["xb"]}
    assert list(got) == ["va", "vb", "vc"]
    for k, a in want.items():
        assert got[k].dtype == np.float16 and got[k].flags.writeable and got[k].flags.c_contiguous
        np.testing.assert_array_equal(got[k], a)


# --------------------------------------------------------------------------- the consumers' runtimes

RUNTIMES = [("3.6", "1.19.5"), ("3.11", "1.23.5"), ("3.11", "1.26.4")]  # UniVL's documented one; numpy 1.x on 3.11

LOADER = r"""
import json, pickle, sys, warnings
import numpy as np
warnings.simplefilter("error")
univl, meta, expected = sys.argv[1:4]
feats = pickle.load(open(univl, 'rb'))  # UniVL's dataloaders, verbatim
out = {"numpy": np.__version__, "keys": list(feats), "meta": {str(k): v for k, v in pickle.load(open(meta, 'rb')).items()}}
for k, a in feats.items():
    b = np.load(expected + "/" + k + ".npy")
    out[k] = [str(a.dtype), list(a.shape), bool(np.array_equal(a, b)), bool(a.flags.writeable)]
print(json.dumps(out))
"""


def _interpreter(version: str) -> str | None:
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = sorted(glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", "python")))
    return found[-1] if found else shutil.which(f"python{version}")


def _venv(python: str, numpy: str) -> str:
    """A venv with ``numpy==VERSION`` under the test cache (built once; skip when it cannot be)."""
    cache = os.environ.get("MILNCE_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "milnce-tests")
    tag = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True,
                         text=True, timeout=60).stdout.strip()
    where = os.path.join(cache, f"py{tag}-numpy{numpy}")
    py = os.path.join(where, "bin", "python")
    if os.path.exists(py):
        return py
    tmp = f"{where}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(cache, exist_ok=True)
    steps = [[python, "-m", "venv", tmp],
             [os.path.join(tmp, "bin", "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
              "--only-binary", ":all:", f"numpy=={numpy}"]]
    for cmd in steps:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            last = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]
            pytest.skip(f"cannot build a Python {tag} venv with numpy {numpy} ({last[0][:200]})")
    try:
        os.rename(tmp, where)
    except OSError:  # another run built it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return py


@pytest.mark.slow
@pytest.mark.parametrize("version,numpy", RUNTIMES, ids=[f"py{v}-numpy{n}" for v, n in RUNTIMES])
def test_loads_with_the_consumers_runtime(packed, tmp_path, version, numpy):
    python = _interpreter(version)
    if python is None:
        pytest.skip(f"no Python {version} interpreter (pyenv install {version})")
    py = _venv(python, numpy)
    univl, meta, _ = packed
    r = subprocess.run([py, "-c", LOADER, str(univl), str(meta), str(tmp_path / "u")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    assert got["numpy"] == numpy and got["keys"] == ["va", "vb", "vc"]
    assert got["meta"] == {"0": ["xa"], "1": ["xb"]}
    assert got["va"] == ["float16", [3, 1024], True, True] and got["vb"] == ["float16", [1, 1024], True, True]


def test_pack_says_one_video(tmp_path, capsys):

    r = get_recipe("videoclip")
    layout = RecipeLayout(r)
    layout.prepare(str(tmp_path / "f"))
    layout.write(str(tmp_path / "f" / "a.npy"), {r.feature: np.zeros((2, r.dim))}, {"settings": {}})
    assert main(["pack", "videoclip", str(tmp_path / "f"), str(tmp_path / "m")]) == 0
    assert "packed 1 video into" in capsys.readouterr().out


def test_recipes_listed(capsys):
    assert main(["recipes"]) == 0
    a = capsys.readouterr().out
    assert main(["extract", "--recipe", "list"]) == 0
    assert capsys.readouterr().out == a
    for r in RECIPES.values():
        assert r.name in a and r.source in a
    assert "fps=30" in a and "fps=16" in a and "mixed_5c (1024)" in a


def test_pack_layouts(tmp_path, capsys):
    d = tmp_path / "f"
    d.mkdir()
    np.save(d / "va.npy", np.ones((3, 1024), np.float16))  # univl: mixed_5c rows
    np.save(d / "vb.npy", np.zeros((2, 1024), np.float16))
    assert main(["pack", "univl", str(d), str(tmp_path / "u.pickle")]) == 0
    with open(tmp_path / "u.pickle", "rb") as f:
        u = pickle.load(f)  # the test reads what the consumer would read; milnce never does
    assert set(u) == {"va", "vb"} and u["va"].dtype == np.float16 and u["vb"].shape == (2, 1024)
    d = tmp_path / "g"
    d.mkdir()
    a = np.ones((3, 512), np.float16)  # videoclip: video_embedding rows
    np.save(d / "va.npy", a)
    np.save(d / "vb.npy", np.zeros((2, 512), np.float16))
    (tmp_path / "ids.txt").write_text("vb\nva\n")
    assert main(["pack", "videoclip", str(d), str(tmp_path / "m"), "--ids", str(tmp_path / "ids.txt"),
                 "--shard-size", "1", "--split", "val"]) == 0
    m = tmp_path / "m"
    with open(m / "val_meta.pkl", "rb") as f:
        assert pickle.load(f) == {0: ["vb"], 1: ["va"]}
    s1 = np.load(m / "val_1_starts.npy")
    assert s1.dtype == np.int64 and s1.tolist() == [0, 3]
    np.testing.assert_array_equal(np.load(m / "val_1_data.npy"), a)
    np.save(d / "x.y.npy", a)
    assert main(["pack", "univl", str(d), str(tmp_path / "u2.pickle")]) != 0
    assert "x.y.npy" in capsys.readouterr().err
