"""``milnce.extract.pack``: ``milnce pack``."""

from __future__ import annotations

import os
import pickle
import pickletools

import numpy as np
import pytest

from milnce.extract.pack import read_id_list


def test_id_list_skips_blanks_and_comments(tmp_path):
    f = tmp_path / "ids.txt"
    f.write_text("# split\n\nb\r\n a \n")
    assert read_id_list(str(f)) == ["b", "a"]

ALLOWED_GLOBALS = {"numpy ndarray", "numpy dtype"}


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


def test_the_runtime_check_catches_numpy2_pickles(tmp_path):
    """The control: what numpy 2 writes by itself names ``numpy._core`` (or uses protocol 5)."""
    if int(np.__version__.split(".")[0]) < 2:
        pytest.skip("numpy 1.x here: its own pickles are the old format")
    data = pickle.dumps({"a": np.ones((2, 3), np.float16)}, protocol=pickle.HIGHEST_PROTOCOL)
    proto, names = opcodes(data)
    assert proto == 5 or not names <= ALLOWED_GLOBALS
