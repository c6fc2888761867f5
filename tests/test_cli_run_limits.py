"""``extract``/``embed-video`` refuse a ``--batch-size`` or ``--workers`` out of the pipeline's range
in one line that names the option, built once by the pipeline's check (``name=``), not rewritten
by the command."""

from __future__ import annotations

import pytest

from milnce.cli import main
from milnce.errors import UsageError
from milnce.video.pipeline import MAX_BATCH, resolve_batch_size, resolve_workers


@pytest.mark.parametrize("command", ["extract", "embed-video"])
@pytest.mark.parametrize(("option", "value", "want"), [
    ("--batch-size", str(MAX_BATCH + 1), f"--batch-size must be a whole number in [1, {MAX_BATCH}], got {MAX_BATCH + 1}"),
    ("--workers", "5000", "--workers must be a whole number in [0, 4096], got 5000"),
])
def test_out_of_range_refused_naming_the_option(command, option, value, want, tmp_path, capsys):
    assert main([command, str(tmp_path), "--out", str(tmp_path / "out"), option, value, "--no-download"]) == 2
    err = capsys.readouterr().err
    assert err == f"milnce: error: {want}\n"
    assert not (tmp_path / "out").exists()


def test_the_library_names_them_plainly():
    with pytest.raises(UsageError, match=r"^batch size must be a whole number"):
        resolve_batch_size(0, "cpu")
    with pytest.raises(UsageError, match=r"^workers must be a whole number"):
        resolve_workers(-1)
