"""One failure report: the same broken file gets the same one-line reason (no exception class, no
errno) in index, extract and eval, listed once, and a rerun that meets it again (index: skips it)
exits 1 in every command (issue 24 item 6)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from milnce.cli import main
from milnce.video.result import failure_reason
from video_fixtures import make_video

pytestmark = pytest.mark.usefixtures("reuse_model")  # index reuses the loaded model
SMALL = ["--num-frames", "8", "--size", "32", "--workers", "0"]


@pytest.fixture()
def library(tmp_path) -> Path:
    root = tmp_path / "v"
    root.mkdir()
    make_video(root / "video1.mp4", n=10, width=32, height=32)
    (root / "video3.mp4").write_bytes(b"this is not a video " * 20)
    (tmp_path / "m.csv").write_text("key,vid_key,video_id,sentence\nret1,msr1,video1,a man\n"
                                    "ret3,msr3,video3,the woman\n")
    return root


def _failed_lines(err: str, name: str) -> list[str]:
    return [ln for ln in err.splitlines() if name in ln]


def _reason(line: str, path: str) -> str:
    return line.split(path + ": ", 1)[1] if path + ": " in line else line.rsplit("video3: ", 1)[1]


def test_one_reason_listed_once_and_one_exit_status(library, tmp_path, model, wargs, capsys, monkeypatch):
    import milnce.commands.eval as eval_cmd
    import milnce.commands.extract as extract_cmd

    monkeypatch.setattr(extract_cmd, "model_from_args", lambda args: model)
    monkeypatch.setattr(eval_cmd, "model_from_args", lambda args: model)
    bad = str(library / "video3.mp4")
    runs = {
        "index": ["index", str(library), "--index", str(tmp_path / "idx"), "--quiet", *SMALL, *wargs],
        "extract": ["extract", str(library), "--out", str(tmp_path / "ext"), *SMALL, *wargs],  # with a progress bar
        "eval": ["eval", "msrvtt", "--videos", str(library), "--annotations", str(tmp_path / "m.csv"), "--quiet",
                 "--cache", str(tmp_path / "cache"), *SMALL, *wargs],
    }
    reasons: dict[str, str] = {}
    for attempt in (1, 2):  # the rerun meets the known failure again (index skips it)
        for name, argv in runs.items():
            rc = main(argv)
            err = capsys.readouterr().err
            assert rc == 1, (name, attempt, err)
            lines = _failed_lines(err, "video3")
            assert len(lines) == 1, (name, attempt, err)  # listed once
            why = _reason(lines[0], bad)
            assert not re.search(r"Errno|Error\b|Error:|\[", why), (name, why)  # no class, no errno
            reasons[f"{name}{attempt}"] = why
    assert len(set(reasons.values())) == 1, reasons
    assert next(iter(reasons.values())).startswith("not a readable video file")


def test_failure_reason_strips_the_path_once():
    p = "/data/my videos/a.mp4"
    assert failure_reason(f"{p}: not a readable video file (Invalid data)", p) == "not a readable video file (Invalid data)"
    assert failure_reason("a.mp4: no video stream", p) == "no video stream"
    assert failure_reason("/data/my\nvideos/a.mp4: cut\nshort", "/data/my\nvideos/a.mp4") == "cut short"
    assert failure_reason("", p) == "unreadable"
