"""``milnce pack``'s pickles load with the consumers' own ``pickle.load`` under their runtimes:
protocol 4 and no global but ``numpy.ndarray`` / ``numpy.dtype`` (numpy 2's own pickles name
``numpy._core``, which numpy 1.x lacks; protocol 5 does not load on Python 3.6)."""

from __future__ import annotations

import glob
import json
import os
import pickle
import pickletools
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from milnce.cli import main
from milnce.extract.pack import PICKLE_PROTOCOL
from milnce.extract.recipe_store import RecipeLayout
from milnce.recipes import get_recipe

ALLOWED_GLOBALS = {"numpy ndarray", "numpy dtype"}


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


def opcodes(data: bytes) -> tuple[int, set[str]]:
    """The protocol and the globals a pickle names (from its opcodes; STACK_GLOBAL's two strings)."""
    proto, names, strings = -1, set(), []
    for op, arg, _pos in pickletools.genops(data):
        if op.name == "PROTO":
            proto = arg
        elif op.name == "GLOBAL":
            names.add(arg)
        elif op.name == "STACK_GLOBAL":
            names.add(f"{strings[-2]} {strings[-1]}")
        if isinstance(arg, str):
            strings.append(arg)
    with open(os.devnull, "w") as null:
        pickletools.dis(data, out=null)  # a well-formed stream (memo, marks, STOP)
    return proto, names


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
    proto, names = opcodes(univl.read_bytes())
    assert proto == PICKLE_PROTOCOL == 4 and names == ALLOWED_GLOBALS
    proto, names = opcodes(meta.read_bytes())
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


def test_the_runtime_check_catches_numpy2_pickles(tmp_path):
    """The control: what numpy 2 writes by itself names ``numpy._core`` (or uses protocol 5)."""
    if int(np.__version__.split(".")[0]) < 2:
        pytest.skip("numpy 1.x here: its own pickles are the old format")
    data = pickle.dumps({"a": np.ones((2, 3), np.float16)}, protocol=pickle.HIGHEST_PROTOCOL)
    proto, names = opcodes(data)
    assert proto == 5 or not names <= ALLOWED_GLOBALS
