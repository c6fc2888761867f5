"""``milnce.timespec``: times, spans and video references parsed strictly in one place (ASCII
digits, M:SS / H:MM:SS fields below 60), one-line errors in the CLI and 422 over HTTP."""

from __future__ import annotations

import pytest

from milnce.cli import main
from milnce.errors import UsageError
from milnce.timespec import TimeSpecError, parse_like, parse_like_id, parse_span, parse_time


@pytest.mark.parametrize("text, seconds", [
    ("65", 65.0), ("80.5", 80.5), (".5", 0.5), ("1:05", 65.0), ("0:59.5", 59.5), ("1:02:03.5", 3723.5),
    (" 7 ", 7.0), ("120:00", 7200.0),
])
def test_times_accepted(text, seconds):
    assert parse_time(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [
    "1_0", "²", "\u0661\u0662", "１２", "0:99", "1:60:00", "1:00:60", "1.5:30", "inf", "nan", "1e3", "-5",
    "", ":", "1:", "1:2:3:4", "+5", "0x10", "9" * 40,
])
def test_times_refused(text):
    with pytest.raises(TimeSpecError) as ei:
        parse_time(text)
    assert isinstance(ei.value, UsageError) and "\n" not in str(ei.value)


def test_spans_and_likes():
    no_file = lambda p: False  # noqa: E731
    assert parse_span("12@1:05-1:20", exists=no_file) == (12, 65.0, 80.0)
    assert parse_span("a@b.mp4@65-80.5", exists=no_file) == ("a@b.mp4", 65.0, 80.5)
    assert parse_span("²@1-2", exists=no_file) == ("²", 1.0, 2.0)  # not an id: a (missing) path
    assert parse_like("3@1:05", exists=no_file) == (3, 65.0)
    assert parse_like("²@1", exists=no_file) == ("²", 1.0)
    assert parse_like("x@y.mp4", exists=lambda p: p == "x@y.mp4") == ("x@y.mp4", 0.0)
    for bad in ("2@1_0-3", "2@0:99-1:00", "2@\u0661-3", "2@1", "@1-2"):
        with pytest.raises(TimeSpecError):
            parse_span(bad, exists=no_file)
    with pytest.raises(TimeSpecError):
        parse_like("2@1_0", exists=no_file)
    assert parse_like_id(" 7@12.5 ") == (7, 12.5) and parse_like_id("7") == (7, 0.0)
    for bad in ("²@1", "7@1:05", "7@1_0", "\u0667@1", "7@", "x", "1" * 19):
        with pytest.raises(TimeSpecError):
            parse_like_id(bad)


@pytest.mark.parametrize("span", ["²@1-2", "2@1_0-3", "2@0:99-1:40", "2@\u0661-3"])
def test_clip_cli_one_line(tmp_path, capsys, span):
    assert main(["clip", "--index", str(tmp_path / "ix"), span]) == 2
    err = capsys.readouterr().err
    assert err.startswith("milnce: error:") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.usefixtures("reuse_model")
def test_search_like_superscript_is_a_missing_path_not_a_traceback(tmp_path, capsys, wargs, model):
    import numpy as np

    from milnce.index import Index
    from tests.cli.test_search import fake_emb

    with Index.create(tmp_path / "ix", model) as ix:
        ix.add_video("/nonexistent/v.mp4", fake_emb(4, np.random.default_rng(0)), size=10, mtime=1.0,
                     content_hash="h")
    for like, words in (("²@1", "no such video file"), ("1@1_0", "START")):
        rc = main(["search", "--index", str(tmp_path / "ix"), "--like", like, *wargs])
        err = capsys.readouterr().err
        assert rc == 2 and words in err and err.count("\n") == 1, err


def test_server_answers_422(tmp_path, model):
    """Over HTTP: a like reference outside the grammar and a date past the year 9999 are 422s."""
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    import numpy as np
    from fastapi.testclient import TestClient

    from milnce.index import Index
    from milnce.server import create_app
    from tests.cli.test_search import fake_emb

    with Index.create(tmp_path / "ix", model) as ix:
        ix.add_video("/nonexistent/v.mp4", fake_emb(4, np.random.default_rng(0)), size=10, mtime=1.0,
                     content_hash="h")
    with Index.open(tmp_path / "ix") as ix, TestClient(create_app(ix, model, refresh_interval=0),
                                                        raise_server_exceptions=False) as c:
        for like in ("²@1", "1@1_0", "\u0661", "1@1e3", "1@-5"):
            r = c.get("/api/search", params={"like": like})
            assert r.status_code == 422, (like, r.text)
        r = c.get("/api/search", params={"q": "cut tomato", "after": "99999999999999"})
        assert r.status_code == 422 and "out of range" in r.text
        assert c.get("/api/search", params={"like": "1@0.5"}).status_code == 200
