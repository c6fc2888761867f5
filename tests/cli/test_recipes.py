"""``milnce pack`` checks what it packs: bounded reads (``--ids``, ``.npy`` headers), widths,
values, sidecars, duplicates, an existing OUT; each refusal is one line and exit code 2."""

from __future__ import annotations

import json
import os
import pickle
import resource
from pathlib import Path

import numpy as np
import pytest

from milnce.cli import main
from milnce.errors import UsageError
from milnce.extract.pack import MAX_ID_LINE, pack_videoclip, read_id_list
from milnce.extract.recipe_store import RecipeLayout
from milnce.recipes import get_recipe
from milnce.video.npyfile import NpyFileError, npy_header, read_npy


def managed(root: Path, recipe: str, rows: dict[str, int]) -> Path:
    """A folder as ``milnce extract --recipe`` writes it."""
    r = get_recipe(recipe)
    layout = RecipeLayout(r)
    layout.prepare(str(root))
    rng = np.random.default_rng(0)
    for vid, n in rows.items():
        layout.write(str(root / f"{vid}.npy"), {r.feature: rng.standard_normal((n, r.dim))}, {"settings": {}})
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
    d = managed(tmp_path / "f", "videoclip", {"a": 2})
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


def test_id_list_skips_blanks_and_comments(tmp_path):
    f = tmp_path / "ids.txt"
    f.write_text("# split\n\nb\r\n a \n")
    assert read_id_list(str(f)) == ["b", "a"]


def test_npy_header_checked_against_the_file_size_before_allocating(tmp_path, capsys):
    d = managed(tmp_path / "f", "videoclip", {"a": 2})
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
    d = managed(tmp_path / "f", "videoclip", {"a": 2, "b": 1})
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
    d = managed(tmp_path / "f", "univl", {"a": 2, "b": 3})
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
    v = managed(tmp_path / "v", "videoclip", {"a": 1})
    refused(capsys, ["pack", "univl", str(v), out], "--recipe videoclip", "pack univl")


def test_duplicate_and_unsafe_ids_refused(tmp_path, capsys):
    d = managed(tmp_path / "f", "videoclip", {"a": 2, "b": 1})
    ids = tmp_path / "ids.txt"
    ids.write_text("a\nb\na\na\n")
    refused(capsys, ["pack", "videoclip", str(d), str(tmp_path / "m"), "--ids", str(ids)], "'a' (3 times)")
    (tmp_path / "x.npy").write_bytes((d / "a.npy").read_bytes())
    with pytest.raises(UsageError, match="not video ids"):
        pack_videoclip(str(d), str(tmp_path / "m"), ids=["../x"])
    assert not os.path.exists(tmp_path / "m")


# --------------------------------------------------------------------------- an existing OUT


def test_univl_refuses_an_existing_file_unless_overwrite(tmp_path, capsys):
    d = managed(tmp_path / "f", "univl", {"a": 2})
    out = tmp_path / "u.pickle"
    out.write_bytes(b"precious")
    refused(capsys, ["pack", "univl", str(d), str(out)], "exists", "--overwrite")
    assert out.read_bytes() == b"precious"
    assert main(["pack", "univl", str(d), str(out), "--overwrite"]) == 0
    with open(out, "rb") as f:
        assert list(pickle.load(f)) == ["a"]


def test_videoclip_refuses_existing_shards_unless_overwrite(tmp_path, capsys):
    d = managed(tmp_path / "f", "videoclip", {"a": 2, "b": 1, "c": 3})
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
    d = managed(tmp_path / "f", "videoclip", {"a": 2, "b": 1, "c": 3})
    x = np.ones((3, 512), np.float16)
    x[0, 0] = np.inf
    np.save(d / "c.npy", x)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "notes.txt").write_text("mine")
    refused(capsys, ["pack", "videoclip", str(d), str(tmp_path / "m"), "--shard-size", "1"], "c.npy", "infinite")
    assert os.listdir(tmp_path / "m") == ["notes.txt"]
