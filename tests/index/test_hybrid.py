"""Hybrid and speech search over an index with transcripts (no model: embeddings given): the
fused ranking is exact and independent of k, FTS5 syntax is words, the snapshot bounds what FTS
finds, and an index without transcript tables searches visual only."""

from __future__ import annotations

import sqlite3
import types

import numpy as np
import pytest

from milnce.index import Index
from milnce.index.hybrid import fuse
from milnce.index.ranking import percentile_rows
from milnce.index.transcripts import fts_phrase, query_words
from milnce.video.subtitles import Cue, SubtitleTrack
from milnce.windows import WindowSettings

W = WindowSettings(fps=10.0, num_frames=8, size=64, stride=4)


def _emb(rng: np.random.Generator, n: int) -> types.SimpleNamespace:
    st = np.arange(n) * 0.4
    return types.SimpleNamespace(starts=st, ends=st + 0.8, embeddings=rng.normal(size=(n, 512)).astype(np.float32),
                                 duration=float(st[-1] + 0.8))


def _track(*cues: tuple[float, float, str], lang: str | None = "en") -> tuple[list[SubtitleTrack], dict]:
    return [SubtitleTrack("t", lang, [Cue(a, b, t) for a, b, t in cues])], {"test": True}


SAID = {
    "/v/a.mp4": _track((1.0, 2.0, "now add two teaspoons of baking soda"), (5.0, 6.0, "stir the pot slowly")),
    "/v/b.mp4": _track((0.5, 1.5, "pour the water"), (3.0, 4.0, "add the flour and baking powder")),
    "/v/c.mp4": _track((2.0, 3.0, "the dog runs to the door"), lang=None),
}


def _index(path, n_videos: int = 6, seed: int = 0) -> Index:
    rng = np.random.default_rng(seed)
    idx = Index.create_for(path, "wid", W)
    items = [(f"/v/{chr(97 + i)}.mp4", _emb(rng, 20 + 3 * i), 1, 1.0, f"h{i}") for i in range(n_videos)]
    idx.add_videos(items, transcripts={p: SAID[p] for p, *_ in items if p in SAID})
    return idx


@pytest.fixture()
def idx(tmp_path):
    i = _index(tmp_path / "ix")
    yield i
    i.close()


def _q(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(1, 512)).astype(np.float32)


def _brute(idx: Index, q: np.ndarray, text: str, weight: float) -> list[tuple[float, int]]:
    """Every window's fused score, computed directly from the plan: the reference ranking."""
    snap = idx.snapshot
    plan = idx.speech_plans(snap, [text], q, "hybrid", weight)[0]
    rows = np.arange(snap.num_rows)
    vis = (np.asarray(snap.vectors, np.float64) @ q[0].astype(np.float64)).astype(np.float32)
    fused = fuse(vis, plan.speech_of(rows), plan.scale, "hybrid")
    order = np.lexsort((rows, -fused))
    return [(float(fused[r]), int(r)) for r in order]


def test_hybrid_windows_are_the_exact_fused_ranking_and_independent_of_k(idx):
    q, text = _q(), "add baking soda"
    for weight in (0.5, 5.0):
        ref = _brute(idx, q, text, weight)
        got = idx.search_embeddings(q, 12, merge=False, speech_text=[text], mode="hybrid", speech_weight=weight)[0]
        assert [m.score for m in got] == pytest.approx([s for s, _ in ref[:12]], rel=1e-6)
        small = idx.search_embeddings(q, 4, merge=False, speech_text=[text], mode="hybrid", speech_weight=weight)[0]
        assert [(m.video_id, m.start) for m in small] == [(m.video_id, m.start) for m in got[:4]]
    moments = idx.search_embeddings(q, 8, speech_text=[text], mode="hybrid", speech_weight=5.0)[0]
    page = idx.search_embeddings(q, 4, offset=4, speech_text=[text], mode="hybrid", speech_weight=5.0)[0]
    assert [(m.video_id, m.start, m.end) for m in page] == [(m.video_id, m.start, m.end) for m in moments[4:8]]
    top = moments[0]  # a heavy speech weight puts the spoken moment first, with its cue and the matched words
    assert top.path == "/v/a.mp4" and top.speech_score > 0.5 and top.visual_score is not None
    cue = top.cues[0]
    assert cue["text"] == "now add two teaspoons of baking soda" and cue["lang"] == "en"
    assert [cue["text"][a:b] for a, b in cue["matches"]] == ["add", "baking", "soda"]
    assert 0 <= top.percentile <= 100


def test_speech_mode_ranks_only_spoken_matches(idx):
    got = idx.search_embeddings(_q(), 10, speech_text=["baking"], mode="speech")[0]
    assert {m.path for m in got} == {"/v/a.mp4", "/v/b.mp4"}
    assert all(m.speech_score > 0 and m.cues for m in got)
    assert idx.search_embeddings(_q(), 10, speech_text=["zebra"], mode="speech")[0] == []


def test_visual_mode_is_unchanged_and_hybrid_without_speech_equals_visual(idx):
    q = _q()
    vis = idx.search_embeddings(q, 6)[0]
    assert all(m.cues is None and m.speech_score is None for m in vis)
    none = idx.search_embeddings(q, 6, speech_text=["zebra"], mode="hybrid")[0]
    assert [(m.video_id, m.start, m.score) for m in none] == [(m.video_id, m.start, m.score) for m in vis]


@pytest.mark.parametrize("text", ["a-b", "foo:bar", "don't", "add AND", "*", '"', "NEAR(add soda)", "add OR",
                                  "text:add", "^add", "add*", "(", "-soda", "{add soda}", "\x00add"])
def test_fts5_syntax_in_the_query_is_taken_as_words(idx, text):
    idx.search_embeddings(_q(), 3, speech_text=[text], mode="hybrid")  # no "no such column", no syntax error
    assert all('"' not in w or fts_phrase(w).count('"') % 2 == 0 for w in query_words(text))


def test_and_or_are_words_not_operators(idx):
    got = idx.search_embeddings(_q(), 10, speech_text=["flour AND zebra"], mode="speech")[0]
    assert [m.path for m in got] == ["/v/b.mp4"]  # "AND" is not an operator: flour alone matches


def test_fts_results_are_kept_to_the_snapshot(tmp_path):
    """FTS reads the live database: a reader's older snapshot must not return cues of videos
    committed after it, nor of removed ones."""
    path = tmp_path / "ix"
    w = _index(path, n_videos=2)
    r = Index.open(path)
    snap_videos = set(r.snapshot.records)
    rng = np.random.default_rng(5)
    w.add_videos([("/v/c.mp4", _emb(rng, 10), 1, 1.0, "hc")], transcripts={"/v/c.mp4": SAID["/v/c.mp4"]})
    got = r.search_embeddings(_q(), 10, speech_text=["dog door"], mode="speech")[0]
    assert got == [] and set(r.snapshot.records) == snap_videos
    w.remove_videos([w.video_id_of("/v/a.mp4")])
    assert w.transcript_counts() == (2, 3)  # the removed video's cues went with it
    w.close()
    r.close()


def test_index_without_transcript_tables_searches_visual_only(tmp_path):
    """An index built before transcripts: no FTS tables. It opens (read-only too) and searches
    visual only; the mode says so once."""
    idx = _index(tmp_path / "ix")
    q = _q()
    vis = [(m.video_id, m.start, m.score) for m in idx.search_embeddings(q, 5)[0]]
    idx.close()
    con = sqlite3.connect(tmp_path / "ix" / "index.sqlite")
    for t in ("videos_ad_transcripts", "cue_rows_ai", "cue_rows_ad"):
        con.execute(f"DROP TRIGGER {t}")
    for t in ("cues_fts", "cue_rows", "transcript_state"):
        con.execute(f"DROP TABLE {t}")
    con.commit()
    con.close()
    old = Index.open(tmp_path / "ix")
    assert old.transcript_store() is None and not old.has_transcripts()
    assert old.search_mode(None) == ("visual", "visual only: the index has no transcripts")
    assert old.search_mode("hybrid")[0] == "visual"
    got = old.search_embeddings(q, 5, speech_text=["add soda"], mode="hybrid")[0]
    assert [(m.video_id, m.start, m.score) for m in got] == vis
    assert old.search_embeddings(q, 5, speech_text=["add soda"], mode="speech")[0] == []
    old.close()


def test_percentile_sample_rows_are_fixed(idx):
    a = percentile_rows(idx.snapshot)
    assert len(a) == idx.num_live and a is percentile_rows(idx.snapshot)


def test_speech_weight_and_mode_are_checked(idx):
    from milnce.errors import UsageError

    with pytest.raises(UsageError, match="speech weight"):
        idx.search_embeddings(_q(), 3, speech_text=["add"], mode="hybrid", speech_weight=-1)
    with pytest.raises(UsageError, match="mode must be"):
        idx.search_mode("audio")
