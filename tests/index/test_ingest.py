"""``milnce.index.ingest``: What building an index from videos (``milnce.index.build``) and from feature files
(``milnce.index.features``) share (one video's windows are ``milnce.video.result.VideoWindows``)."""

from __future__ import annotations

from milnce.index.ingest import Progress

EVIL = "a\nmilnce: error: forged\x1b[2J"


def test_progress_bar_postfix_is_printable(capsys):
    bar = Progress(2, 7200.0)
    bar.done(3600.0, f"/x/{EVIL}.npz")
    bar.bar.refresh()
    bar.close()
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\nmilnce: error" not in err and "\\x0amilnce" in err
