"""``milnce.index.filters``: Which videos a search may return."""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pytest

import milnce.index.screen as search_mod
from index_fixtures import CENTRES, reference, same
from index_fixtures import FOLDERS as BIG_FOLDERS
from milnce.index import Index
from milnce.index.filters import (
    FilterError,
    NoVideoMatchesError,
    VideoFilter,
    collection_root,
    parse_when,
    require_matches,
    select_videos,
)


@pytest.mark.parametrize("text", ["99999999999999", "-99999999999999", "1e300", "0001-01-01"])
def test_when_out_of_range(text):
    with pytest.raises(FilterError, match="out of range|not a date"):
        parse_when(text)


def test_when_in_range_describes():
    t = parse_when("2024-05-01")
    assert "2024-05-01" in VideoFilter(mtime_min=t).describe()
    assert parse_when("9999-12-01") > 0

ROOT = "/media/footage"
FOLDERS = ["kitchen", "kitchen/2024", "kitchen/2024/may", "garden", "garden/dogs", "a b", "x[1]"]
NAMES = ["cook", "dog", "walk-", "Cat", "2024-05-01 clip", "e?x"]
EXTS = [".mp4", ".mkv", ".MP4"]


@dataclass
class Rec:
    path: str
    mtime: float
    duration: float


def random_records(rng: np.random.Generator, n: int) -> list[Rec]:
    out = []
    for i in range(n):
        folder = FOLDERS[rng.integers(len(FOLDERS))]
        name = f"{NAMES[rng.integers(len(NAMES))]}{i}{EXTS[rng.integers(len(EXTS))]}"
        out.append(Rec(f"{ROOT}/{folder}/{name}", float(rng.integers(1.6e9, 1.8e9)), float(rng.uniform(0, 600))))
    return out


def ref_glob(segments: list[str], pattern: list[str]) -> bool:
    """Segment-wise reference: ``**`` is zero or more components (one or more when last),
    anything else one component by ``fnmatch.fnmatchcase``."""
    if not pattern:
        return not segments
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        lo = 1 if not rest else 0
        return any(ref_glob(segments[k:], rest) for k in range(lo, len(segments) + 1))
    return bool(segments) and fnmatch.fnmatchcase(segments[0], head) and ref_glob(segments[1:], rest)


def ref_matches(r: Rec, f: VideoFilter) -> bool:
    if f.duration_min is not None and r.duration < f.duration_min:
        return False
    if f.duration_max is not None and r.duration > f.duration_max:
        return False
    if f.mtime_min is not None and r.mtime < f.mtime_min:
        return False
    if f.mtime_max is not None and r.mtime >= f.mtime_max:
        return False
    if f.under is not None and os.path.commonpath([r.path, f.under]) != f.under:
        return False
    if f.path_glob is not None:
        root = ROOT
        if "/" in f.path_glob:
            return ref_glob(os.path.relpath(r.path, root).split("/"), f.path_glob.split("/"))
        return fnmatch.fnmatchcase(os.path.basename(r.path), f.path_glob)
    return True


GLOBS = ["*.mp4", "*.MP4", "dog*", "*[0-9].mkv", "*[!4].mp4", "?at*", "e[?]x*", "kitchen/**", "kitchen/*",
         "kitchen/2024/*", "**/may/*", "**/*.mkv", "garden/**/*.mp4", "a b/*", "x[[]1]/*", "*/dogs/dog*",
         "**/2024/**", "*"]


def random_filter(rng: np.random.Generator) -> VideoFilter:
    kw: dict = {}
    if rng.random() < 0.4:
        kw["under"] = f"{ROOT}/{FOLDERS[rng.integers(len(FOLDERS))]}" if rng.random() < 0.9 else ROOT
    if rng.random() < 0.5:
        kw["path_glob"] = GLOBS[rng.integers(len(GLOBS))]
    if rng.random() < 0.4:
        a, b = sorted(rng.integers(1.6e9, 1.8e9, 2).tolist())
        kw["mtime_min"], kw["mtime_max"] = (float(a) if rng.random() < 0.7 else None), float(b + 1)
    if rng.random() < 0.4:
        a, b = sorted(rng.uniform(0, 600, 2).tolist())
        kw["duration_min"], kw["duration_max"] = a, (b if rng.random() < 0.7 else None)
    return VideoFilter(**kw)


def test_filters_match_a_brute_force_reference():
    rng = np.random.default_rng(0)
    recs = random_records(rng, 300)
    assert collection_root(r.path for r in recs) == ROOT
    nonempty = 0
    for _ in range(400):
        f = random_filter(rng)
        got = select_videos(recs, f)
        want = [r for r in recs if ref_matches(r, f)]
        assert got == want, f
        nonempty += bool(got) and len(got) < len(recs)
    assert nonempty > 100  # the filters were selective, not all-or-nothing
    for g in GLOBS:  # every glob selects something and not everything except '*'
        n = len(select_videos(recs, VideoFilter(path_glob=g)))
        assert n > 0 and (n < len(recs) or g in ("*",)), g


@pytest.mark.parametrize(("kw", "msg"), [
    ({"duration_min": 20.0, "duration_max": 10.0}, "impossible duration range"),
    ({"duration_min": -1.0}, ">= 0"),
    ({"duration_max": float("nan")}, "finite"),
    ({"mtime_min": 2e9, "mtime_max": 1e9}, "impossible date range"),
    ({"mtime_min": 1e9, "mtime_max": 1e9}, "impossible date range"),
    ({"path_glob": "../*.mp4"}, "leave the collection"),
    ({"path_glob": "kitchen/../../etc/*"}, "leave the collection"),
    ({"path_glob": "/etc/*"}, "relative to the collection"),
    ({"path_glob": "~/x"}, "relative to the collection"),
    ({"path_glob": ""}, "relative to the collection"),
    ({"under": "/etc"}, "outside the indexed collection"),
    ({"under": ROOT + "/../other"}, "outside the indexed collection"),
    ({"under": ROOT + "x"}, "outside the indexed collection"),  # a sibling sharing the prefix
])


def test_impossible_filters_are_one_clear_error(kw, msg):
    with pytest.raises(FilterError, match=msg):
        VideoFilter(**kw).validated(ROOT)


def test_under_is_normalised_and_no_match_is_said():
    recs = random_records(np.random.default_rng(1), 50)
    f = VideoFilter(under=ROOT + "/kitchen/../garden/").validated(ROOT)
    assert f.under == ROOT + "/garden"
    assert all(r.path.startswith(ROOT + "/garden/") for r in select_videos(recs, f))
    assert select_videos(recs, VideoFilter(under="/media")) == recs  # above the collection: everything
    with pytest.raises(NoVideoMatchesError, match=r"no indexed video matches the filter \(duration 700..800 s\)"):
        require_matches(recs, VideoFilter(duration_min=700, duration_max=800))
    assert select_videos(recs, VideoFilter()) == recs


def test_parse_when():
    assert parse_when("1700000000") == 1.7e9
    assert parse_when("2024-03-01") == datetime(2024, 3, 1).timestamp()
    assert parse_when("2024-03-01T12:00+00:00") == 1709294400.0
    for bad in ("yesterday", "nan", "2024-13-01"):
        with pytest.raises(FilterError):
            parse_when(bad)


# --- issue 25 item 1: a glob must never backtrack exponentially --------------------------------

def _finishes(fn, limit_s: float = 30.0):
    """Run ``fn`` in a daemon thread; its result, or a failure if it is still running after ``limit_s``
    (a hang guard: the old regex took minutes to hours on these globs, the matcher milliseconds)."""
    import threading

    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(limit_s)
    assert not t.is_alive(), f"still matching after {limit_s} s: exponential backtracking"
    return out[0]


@pytest.mark.parametrize("glob", ["*" * 24 + "Z", "*a" * 6 + "Z", "*a*a*a*a*a*aZ", "**/" * 12 + "*a" * 6 + "Z",
                                  "?*" * 20 + "Z", "[a]*" * 10 + "Z"])


def test_hostile_globs_are_linear(glob):
    from milnce.index.filters import glob_matcher

    name = "a" * 251 + ".mp4"  # 255 characters: the longest file name
    m = glob_matcher(glob)
    assert _finishes(lambda: m.match(name)) is False
    assert _finishes(lambda: m.match(name[:-4] + "Z")) is True
    recs = [Rec(path=f"/c/{name}", mtime=0.0, duration=1.0), Rec(path="/c/b.mp4", mtime=0.0, duration=1.0)]
    assert _finishes(lambda: select_videos(recs, VideoFilter(path_glob=glob))) == []


def test_glob_matcher_equals_the_regex_translation():
    """The matcher against the documented semantics written as a regular expression (the old
    translation, kept here as the independent reference on short inputs where it is fast)."""
    import random
    import re

    from milnce.index.filters import glob_matcher

    def reference(pattern: str) -> re.Pattern[str]:
        out, i, n = [], 0, len(pattern)
        while i < n:
            c = pattern[i]
            if pattern.startswith("**/", i):
                out.append("(?:[^/]*/)*")
                i += 3
            elif pattern.startswith("**", i):
                out.append(".*")
                i += 2
            elif c == "*":
                out.append("[^/]*")
                i += 1
            elif c == "?":
                out.append("[^/]")
                i += 1
            elif c == "[" and (j := pattern.find("]", i + 2 if pattern[i + 1:i + 2] in ("!", "]") else i + 1)) > 0:
                body = pattern[i + 1:j]
                neg = body.startswith("!")
                body = body[1:] if neg else body
                body = "".join("\\" + ch if ch in "\\[^&~|" else ch for ch in body)
                out.append("(?!/)[" + ("^" if neg else "") + body + "]")
                i = j + 1
            else:
                out.append(re.escape(c))
                i += 1
        return re.compile("".join(out) + r"\Z", re.DOTALL)

    rng = random.Random(0)
    pieces = ["a", "b", "/", "*", "**", "**/", "?", "[ab]", "[!a]", "[a-c]", "[", "]", "."]
    for _ in range(5000):
        g = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))
        s = "".join(rng.choice("abc/.") for _ in range(rng.randint(0, 8)))
        assert glob_matcher(g).match(s) == bool(reference(g).match(s)), (g, s)


def test_reversed_glob_range_is_one_error():
    with pytest.raises(FilterError, match="reversed"):
        VideoFilter(path_glob="[z-a].mp4").validated("/c")


def test_no_match_among_one_video(two_video_index, model):

    with Index.open(two_video_index, model) as index:
        with pytest.raises(NoVideoMatchesError, match=r"among 1 video$"):
            require_matches(index.videos()[:1], VideoFilter(path_glob="*.avi"))


def random_store_filter(rng: np.random.Generator) -> VideoFilter:
    kind = rng.integers(5)
    if kind == 0:
        return VideoFilter(under=f"{ROOT}/{BIG_FOLDERS[rng.integers(len(BIG_FOLDERS))]}")
    if kind == 1:
        return VideoFilter(path_glob=str(rng.choice(["*.mkv", "garden/**", "kitchen/*/*", "dog*", "**/C?t*"])))
    if kind == 2:
        lo = 1.70e9 + rng.integers(0, 5 * 10**6)
        return VideoFilter(mtime_min=float(lo), mtime_max=float(lo + 4 * 10**6))
    if kind == 3:
        return VideoFilter(duration_min=float(rng.uniform(150, 200)), duration_max=float(rng.uniform(220, 280)))
    return VideoFilter(under=f"{ROOT}/kitchen", path_glob="*.mp4", duration_min=160.0)


@pytest.mark.parametrize("few_rows", [True, False], ids=["allowed-rows-scored-one-by-one", "int8-screen"])
def test_filters_match_brute_force(big, monkeypatch, few_rows):
    if not few_rows:
        monkeypatch.setattr(search_mod, "FEW_ROWS", 0)
    rng = np.random.default_rng(1 if few_rows else 2)
    checked = 0
    with Index.open(big) as index:
        for _ in range(8):
            filt = random_store_filter(rng)
            q = (CENTRES[rng.integers(12)] + 0.5 * rng.standard_normal(512)).astype(np.float32)
            ref = reference(index, q, 12, filt)
            if not ref:
                with pytest.raises(NoVideoMatchesError, match="no indexed video matches"):
                    index.search_embeddings(q, 12, video_filter=filt)
                continue
            checked += 1
            got = index.search_embeddings(q, 12, video_filter=filt)[0]
            same(got, ref)
            allowed = {r.id for r in index.rows() if filt.validated(collection_root(x.path for x in index.rows())).matches(r)}
            assert {m.video_id for m in got} <= allowed
    assert checked >= 5
