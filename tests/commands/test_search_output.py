"""Small wording rules of the CLI: counts agree with their nouns, help texts print what they mean,
numbers side by side share a format, refusals name the option that lifts them."""

from __future__ import annotations

import argparse
import os
from types import SimpleNamespace

import numpy as np

from milnce import cli
from milnce.commands.search_output import SearchOutput
from milnce.eval.report import format_table
from milnce.index import Index
from milnce.plural import plural
from video_fixtures import make_video


def _commands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_help_texts_print_single_percent_signs():
    """``search --help`` said "within 10%% of" (argparse formats a description only with %(prog))."""
    helps = {name: p.format_help() for name, p in _commands().items()}
    assert "within 10% of (peak - median)" in " ".join(helps["search"].split())
    assert not [name for name, text in helps.items() if "%%" in text]


def test_plural():
    assert (plural(0, "row"), plural(1, "row"), plural(2, "row")) == ("0 rows", "1 row", "2 rows")
    assert plural(1, "query", "queries") == "1 query" and plural(3, "query", "queries") == "3 queries"
    assert plural(1234, "video", thousands=True) == "1,234 videos"


def test_search_table_says_only_1_result(capsys):
    out = SearchOutput("table", False, offset=1)
    out.k, out.fewer_note = 10, "within the filter"
    out.add("red", None, [])
    assert "(only 1 result within the filter)" in capsys.readouterr().out


def test_csv_failure_count_agrees(capsys):
    out = SearchOutput("csv", False)
    out.add("qwerty", "no known word", [])
    out.finish()
    assert "1 of 1 query failed and has no rows" in capsys.readouterr().err


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


def test_clip_refusal_names_overwrite(tmp_path, capsys):
    video = make_video(tmp_path / "v.mp4", n=20, rate=10)
    st = os.stat(video)
    ix = tmp_path / "ix"
    idx = Index.create(ix, SimpleNamespace(weights_id="synthetic", info=None))
    idx.add_video(str(video), SimpleNamespace(embeddings=np.ones((1, 512), np.float32), starts=np.array([0.0]),
                                              ends=np.array([2.0]), duration=2.0),
                  size=st.st_size, mtime=st.st_mtime, content_hash="h")
    idx.close()
    existing = tmp_path / "clip.mp4"
    existing.write_bytes(b"keep me")
    assert cli.main(["clip", "--index", str(ix), "1@0-1", "--out", str(existing)]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and err.count("\n") == 1
    assert existing.read_bytes() == b"keep me"


def test_remove_says_1_video_left(tmp_path, capsys):
    ix = tmp_path / "ix"
    idx = Index.create(ix, SimpleNamespace(weights_id="synthetic", info=None))
    for name in ("a.mp4", "b.mp4"):
        idx.add_video(str(tmp_path / name), SimpleNamespace(embeddings=np.ones((1, 512), np.float32),
                                                            starts=np.array([0.0]), ends=np.array([2.0]), duration=2.0),
                      size=1, mtime=1.0, content_hash=name)
    idx.close()
    assert cli.main(["remove", "--index", str(ix), str(tmp_path / "a.mp4")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"{ix}: 1 video left"
