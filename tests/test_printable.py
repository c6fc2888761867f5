"""``milnce.printable``: Text that can always be printed, whatever a file name (or a name inside a data file)
holds."""

from __future__ import annotations

import os


def test_show_path_escapes_control_characters():
    from milnce.printable import show_path

    assert show_path("a\x1b[2Jb\nc") == "a\\x1b[2Jb\\x0ac"
    assert show_path(os.fsdecode(b"x\xffy")) == "x\\xffy"
