"""``milnce.demo`` called directly, without argparse: what the demo runs on, its index and how its
answers are judged."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

import milnce.index
import milnce.weights
from index_fixtures import unreachable_weights
from milnce import demo as lib
from milnce.demo import OFFLINE_HINT, Demo, DemoError, answer, build_demo_index, choose_demo, held_out_score, verdict


@dataclass
class FakeMoment:
    path: str


class FakeIndex:
    """An index whose ranking is given: query -> paths best first."""

    def __init__(self, ranking: dict[str, list[str]], problems: dict[str, str] | None = None) -> None:
        self.ranking, self.problems = ranking, problems or {}
        self.num_videos = len({p for r in ranking.values() for p in r})

    def query_problem(self, q: str) -> str | None:
        return self.problems.get(q)

    def search(self, q, k, by_video):  # type: ignore[no-untyped-def]
        assert by_video and k == self.num_videos
        if isinstance(q, list):
            return [[FakeMoment(p) for p in self.ranking[c]] for c in q]
        return [FakeMoment(p) for p in self.ranking[q]]


def held_out(tmp_path) -> Demo:  # type: ignore[no-untyped-def]
    a, b, c = (str(tmp_path / f"val000{i}.mp4") for i in range(3))
    shows = {a: ["red left", "red up"], b: ["blue right"], c: ["green down"]}
    return Demo(None, "m", "label", [a, b, c], shows, ["red left", "blue right"],
                {"red left": "val0000.mp4", "blue right": "val0001.mp4"})


def test_verdict_says_right_rank_or_not_found(tmp_path):
    demo = held_out(tmp_path)
    assert verdict(demo, "red left", ["val0000.mp4", "val0001.mp4"]) == " (right: it shows 'red left')"
    assert verdict(demo, "blue right", ["val0000.mp4", "val0002.mp4", "val0001.mp4"]) == (
        " (it shows 'red left' then 'red up'; the video of this caption, val0001.mp4, is #3 of 3)")
    assert verdict(demo, "blue right", ["val0002.mp4"]).endswith("val0001.mp4, was not found)")
    gif = Demo(None, "m", "l", [str(tmp_path / "w.gif")], {str(tmp_path / "w.gif"): ["waterfall"]}, ["waterfall"])
    assert verdict(gif, "a query of the user's", ["w.gif"]) == " (the 'waterfall' video)"
    assert verdict(Demo(None, "m", "l", ["x.mp4"]), "q", ["x.mp4"]) == ""


def test_answer_ranks_only_the_demos_videos(tmp_path):
    demo = held_out(tmp_path)
    stray = str(tmp_path / "earlier-run.mp4")  # indexed by an earlier run into the same folder
    index = FakeIndex({"red left": [stray, demo.videos[1], demo.videos[0]]}, {"?": "no known word"})
    ans = answer(index, demo, "red left")  # type: ignore[arg-type]
    assert [m.path for m in ans.ranked] == [demo.videos[1], demo.videos[0]] and ans.problem is None
    assert ans.verdict.endswith("val0000.mp4, is #2 of 2)")
    bad = answer(index, demo, "?")  # type: ignore[arg-type]
    assert bad.problem == "no known word" and bad.ranked == [] and bad.verdict == ""


def test_held_out_score_counts_first_and_top5(tmp_path):
    demo = held_out(tmp_path)
    a, b, c = demo.videos
    index = FakeIndex({"red left": [a, b, c], "red up": [b, a, c], "blue right": [c, a, b], "green down": [c, a, b]})
    s = held_out_score(index, demo)  # type: ignore[arg-type]
    assert (s.captions, s.first, s.top5, s.videos) == (4, 2, 4, 3)


def test_build_demo_index_takes_the_demos_stride_unless_given(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(milnce.index, "build_index", lambda videos, d, model, **kw: calls.append(kw) or "report")
    monkeypatch.setattr(milnce.index, "index_window", lambda d, model, allow_gaps=False, **given: dict(given))
    demo = Demo(None, "m", "l", ["v.mp4"], stride=4)
    window = {"fps": None, "num_frames": None, "size": 32, "stride": None}
    assert build_demo_index(demo, str(tmp_path), window=window, progress=False) == "report"
    assert build_demo_index(demo, str(tmp_path), window={**window, "stride": 2}, progress=False) == "report"
    assert [c["window"]["stride"] for c in calls] == [4, 2] and calls[0]["window"]["size"] == 32
    assert window["stride"] is None


def test_own_weights_and_videos_load_once_and_download_nothing(tmp_path, monkeypatch):
    import milnce.download

    monkeypatch.setattr(milnce.download, "download", lambda *a, **k: pytest.fail("downloaded"))
    model = SimpleNamespace(weights_id="abc123")
    loads = []
    videos = [str(tmp_path / "a.mp4")]
    demo = choose_demo(lambda: loads.append(1) or model, own_weights="/w.pth", videos=videos,  # type: ignore[arg-type, func-returns-value]
                       progress=False)
    assert loads == [1] and demo.model is model and demo.videos == videos and demo.short == "your weights"
    assert demo.label == "your weights /w.pth (id abc123)" and demo.queries == [q for _, q in lib.DEMO_VIDEOS]
    assert demo.expected == {} and demo.stride is None


@pytest.fixture
def dead_weights(monkeypatch):
    """Every weights source refuses connections: a 127.0.0.1 port bound but not listening."""
    with unreachable_weights(monkeypatch) as dead:
        yield dead


def test_no_fallback_raises_one_error_with_the_offline_hint(dead_weights):
    with pytest.raises(DemoError) as err:
        choose_demo(lambda: pytest.fail("loaded"), own_weights=None, videos=None, fallback=False, progress=False)
    assert str(err.value).startswith("could not download the published weights (") and OFFLINE_HINT in str(err.value)
    assert err.value.exit_code == 2


def test_fallback_is_announced_in_one_logged_line(dead_weights, monkeypatch, caplog):
    fallback_demo = Demo(None, "fallback model", "l", [])
    monkeypatch.setattr(lib, "_synthetic_demo", lambda **kw: fallback_demo)
    with caplog.at_level(logging.WARNING, logger="milnce.demo"):
        got = choose_demo(lambda: pytest.fail("loaded"), own_weights=None, videos=None, progress=False)
    assert got is fallback_demo
    lines = [r.getMessage() for r in caplog.records if r.name == "milnce.demo"]
    assert len(lines) == 1 and lines[0].startswith("the published weights are not available: ")
    assert "\n" not in lines[0] and dead_weights in lines[0] and "(--no-fallback: stop here)" in lines[0]
