"""``milnce.eval.report``: Reports of an evaluation."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from milnce.eval.report import format_table


def _eval_result(missing: int, videos_missing: int) -> SimpleNamespace:
    bench = SimpleNamespace(title="MSR-VTT", name="msrvtt", task="retrieval", limited=False, total_rows=1000)
    metrics = {"R@1": 9.94, "R@5": 24.04, "R@10": 32.0, "MedR": 29.5, "MeanR": 80.25, "tied": 0}
    counts = {"evaluated": 999, "rows_selected": 1000, "missing": missing, "videos_missing": videos_missing,
              "unreadable": 0}
    return SimpleNamespace(benchmark=bench, metrics=metrics, counts=counts, weights_id="w", ties="pessimistic",
                           empty_captions=0)


def test_eval_table_counts_and_published_column():
    table = format_table(_eval_result(1, 1))  # type: ignore[arg-type]
    assert "missing videos: 1 row (1 video); unreadable: 0 rows" in table
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines() if line.startswith(("R@", "MedR"))}
    assert rows["R@1"] == ["9.9", "9.9"] and rows["R@5"] == ["24.0", "24.0"]  # not "24" beside "9.9"
    assert rows["MedR"] == ["29.5", "29.5"]
    assert "missing videos: 2 rows (2 videos)" in format_table(_eval_result(2, 2))  # type: ignore[arg-type]


def test_eval_out_folder_errors_are_milnce_errors(tmp_path, monkeypatch):
    from milnce.errors import MilnceError
    from milnce.eval.report import out_folder

    (tmp_path / "file").write_text("x")
    with pytest.raises(MilnceError, match="must be a folder"):  # crosstask's raised a plain NotADirectoryError
        out_folder(tmp_path / "file")

    def mkdir(self, *a, **k):  # type: ignore[no-untyped-def]
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(MilnceError, match="cannot write"):
        out_folder(tmp_path / "ro")
