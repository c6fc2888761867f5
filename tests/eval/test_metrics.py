"""``milnce.eval.metrics``: Retrieval metrics from a caption x clip score matrix, exact on tied scores."""

from __future__ import annotations

import numpy as np
import pytest

from milnce.errors import MilnceError, UsageError
from milnce.eval import (
    retrieval_metrics,
    retrieval_ranks,
)

# ------------------------------------------------------------------------------ metrics


def naive_ranks(scores: np.ndarray, rule: str) -> list[float]:
    out = []
    for i, row in enumerate(scores):
        better = sum(1 for j, v in enumerate(row) if j != i and v > row[i])
        same = sum(1 for j, v in enumerate(row) if j != i and v == row[i])
        out.append(1 + better + {"pessimistic": same, "optimistic": 0, "average": same / 2}[rule])
    return out


def naive_recall(scores: np.ndarray, k: int, rule: str) -> float:
    hits = 0.0
    for i, row in enumerate(scores):
        better = sum(1 for j, v in enumerate(row) if j != i and v > row[i])
        same = sum(1 for j, v in enumerate(row) if j != i and v == row[i])
        if rule == "average":  # every position among the ties equally likely
            hits += sum(1 for p in range(better + 1, better + same + 2) if p <= k) / (same + 1)
        else:
            hits += (1 + better + (same if rule == "pessimistic" else 0)) <= k
    return 100 * hits / len(scores)


@pytest.mark.parametrize("rule", ["pessimistic", "average", "optimistic"])
def test_metrics_match_naive_with_ties(rule):
    rng = np.random.default_rng(1)
    for n, levels in ((1, 3), (7, 3), (40, 5), (60, 1000)):
        scores = rng.integers(0, levels, size=(n, n)).astype(np.float32)  # many ties
        m = retrieval_metrics(scores, ties=rule)
        ranks = naive_ranks(scores, rule)
        np.testing.assert_allclose(retrieval_ranks(scores, ties=rule), ranks)
        assert m["MedR"] == pytest.approx(float(np.median(ranks)))
        assert m["MeanR"] == pytest.approx(float(np.mean(ranks)))
        for k in (1, 5, 10):
            assert m[f"R@{k}"] == pytest.approx(naive_recall(scores, k, rule))
        assert m["captions"] == n


def test_metrics_without_ties_and_sort_based_reference():
    rng = np.random.default_rng(2)
    scores = rng.standard_normal((50, 50))
    # the usual sort-based computation is right when there are no ties
    order = np.argsort(-scores, axis=1)
    ranks = np.array([1 + int(np.flatnonzero(order[i] == i)[0]) for i in range(50)])
    results = [retrieval_metrics(scores, ties=t) for t in ("pessimistic", "average", "optimistic")]
    assert results[0] == results[1] == results[2]
    assert results[0]["R@1"] == pytest.approx(100 * np.mean(ranks <= 1))
    assert results[0]["R@10"] == pytest.approx(100 * np.mean(ranks <= 10))
    assert results[0]["MedR"] == np.median(ranks) and results[0]["tied"] == 0


def test_all_tied_is_never_a_perfect_score():
    scores = np.zeros((10, 10))
    assert retrieval_metrics(scores)["R@1"] == 0.0 and retrieval_metrics(scores)["MedR"] == 10
    assert retrieval_metrics(scores, ties="average")["R@1"] == pytest.approx(10.0)
    assert retrieval_metrics(scores, ties="optimistic")["R@1"] == 100.0
    with pytest.raises(MilnceError, match="NaN"):
        retrieval_metrics(np.array([[np.nan]]))
    with pytest.raises(UsageError):
        retrieval_metrics(np.zeros((2, 3)))
    targets = np.array([2, 0, 1])
    scores = np.zeros((3, 3))
    scores[np.arange(3), targets] = 1
    assert retrieval_metrics(scores, targets=targets)["R@1"] == 100.0
    assert retrieval_metrics(scores)["R@1"] == 0.0
