"""``milnce.index.negatives``: Negative terms ("dog, not leash")."""

from __future__ import annotations

import numpy as np
import pytest

from milnce.errors import UsageError
from milnce.index.negatives import (
    DEFAULT_NOT_WEIGHT,
    MAX_NOT_WEIGHT,
    check_weight,
    combine_scores,
    combined_top,
    screen_candidates,
    split_query,
)


def test_not_weight_bounded():
    assert check_weight(MAX_NOT_WEIGHT) == MAX_NOT_WEIGHT
    for bad in (1e39, -1, float("nan"), "x"):
        with pytest.raises(UsageError, match="from 0 to 1e\\+06"):
            check_weight(bad)


# -- negatives -----------------------------------------------------------------------------------


def test_combine_scores_definition():
    pos = np.array([1.0, 2.0, -np.inf, 0.5], np.float32)
    neg = np.array([[0.0, 2.0, 5.0, -1.0], [1.0, 0.0, 0.0, -3.0]], np.float32)
    got = combine_scores(pos, neg, 0.5)
    assert np.allclose(got[[0, 1, 3]], [0.5, 1.0, 1.0]) and got[2] == -np.inf
    assert np.array_equal(combine_scores(pos, None), pos)
    for bad in (-0.1, float("inf"), float("nan")):
        with pytest.raises(UsageError, match="not-weight"):
            combine_scores(pos, neg, bad)
    assert DEFAULT_NOT_WEIGHT == 0.5


def test_negatives_rerank_as_specified():
    """Three windows: A matches the positive best but also the negative; with the negative, B
    (a weaker positive, no negative) goes first; without it A does."""
    d = 8
    dog, leash = np.eye(d, dtype=np.float32)[0], np.eye(d, dtype=np.float32)[1]
    vecs = np.stack([1.0 * dog + 0.9 * leash, 0.8 * dog, 0.3 * dog + 0.1 * leash]).astype(np.float32)
    assert combined_top(vecs, dog, None, 3)[0].tolist() == [0, 1, 2]
    rows, scores = combined_top(vecs, dog, leash[None], 3, weight=0.5)
    assert rows.tolist() == [1, 0, 2] and np.allclose(scores, [0.8, 0.55, 0.25])
    assert combined_top(vecs, dog, leash[None], 3, weight=0.1)[0].tolist() == [0, 1, 2]  # weak weight: kept


def test_combined_top_matches_brute_force():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5000, 32)).astype(np.float32)
    live = rng.random(5000) > 0.2
    for _trial in range(20):
        q = rng.standard_normal(32).astype(np.float32)
        negs = rng.standard_normal((int(rng.integers(0, 4)), 32)).astype(np.float32)
        w = float(rng.choice([0.0, 0.25, 0.5, 1.0, 3.0]))
        m = int(rng.integers(1, 50))
        rows, scores = combined_top(x, q, negs, m, w, live=live, block=777)
        full = x @ q - (w * (x @ negs.T).max(axis=1) if len(negs) else 0)
        full[~live] = -np.inf
        want = sorted(range(5000), key=lambda j: (-full[j], j))[:m]
        assert rows.tolist() == want and np.allclose(scores, full[want], atol=1e-5)


def test_screen_candidates_always_hold_the_exact_top():
    """The re-derived bound: screened scores within +-B of the truth never lose a top-m row."""
    rng = np.random.default_rng(4)
    for _trial in range(200):
        n, k, m = 2000, int(rng.integers(0, 4)), int(rng.integers(1, 30))
        w = float(rng.choice([0.0, 0.5, 1.0, 2.0]))
        pos = rng.standard_normal(n).astype(np.float32) * 3
        neg = rng.standard_normal((k, n)).astype(np.float32) * 3
        bp, bn = float(rng.uniform(0, 0.5)), rng.uniform(0, 0.5, k)
        ap = pos + rng.uniform(-bp, bp, n).astype(np.float32) * 0.999  # worst-case-ish errors
        an = neg + (rng.uniform(-1, 1, (k, n)) * bn[:, None] * 0.999).astype(np.float32)
        cand = screen_candidates(ap, an, bp, bn, m, w)
        truth = combine_scores(pos, neg, w)
        top = np.argsort(-truth, kind="stable")[:m]
        assert set(top.tolist()) <= set(cand.tolist())
        assert len(cand) < n or bp + w * (bn.max() if k else 0) > 0.3  # it prunes when the bound is tight


@pytest.mark.parametrize(("text", "want"), [
    ("dog -leash", ("dog", ["leash"])),
    ('dog -leash -"red cat" on a t-shirt', ("dog on a t-shirt", ["leash", "red cat"])),
    ("a dog's walk - in the park", ("a dog's walk in the park", [])),
    ("dog --", ("dog", ["-"])),
])
def test_split_query(text, want):
    assert split_query(text) == want


def test_split_query_needs_a_positive():
    with pytest.raises(UsageError, match="nothing to search"):
        split_query("-leash -cat")
