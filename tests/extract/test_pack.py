"""``milnce.extract.pack``: ``milnce pack``."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from milnce.extract.pack import read_id_list
from video_fixtures import ALLOWED_GLOBALS, pickle_opcodes


def test_id_list_skips_blanks_and_comments(tmp_path):
    f = tmp_path / "ids.txt"
    f.write_text("# split\n\nb\r\n a \n")
    assert read_id_list(str(f)) == ["b", "a"]


def test_the_runtime_check_catches_numpy2_pickles(tmp_path):
    """The control: what numpy 2 writes by itself names ``numpy._core`` (or uses protocol 5)."""
    if int(np.__version__.split(".")[0]) < 2:
        pytest.skip("numpy 1.x here: its own pickles are the old format")
    data = pickle.dumps({"a": np.ones((2, 3), np.float16)}, protocol=pickle.HIGHEST_PROTOCOL)
    proto, names = pickle_opcodes(data)
    assert proto == 5 or not names <= ALLOWED_GLOBALS
