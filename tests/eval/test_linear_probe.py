"""``milnce.eval.probe``: HMDB-51 linear probe."""

from __future__ import annotations

import numpy as np
import pytest

from milnce.errors import MilnceError
from milnce.eval.linear_probe import linear_probe


def test_hmdb_probe_separable_features():
    rng = np.random.default_rng(0)
    classes = [f"c{k}" for k in range(5)]
    centers = rng.standard_normal((5, 64)) * 3
    labels = [classes[i % 5] for i in range(300)]
    x = np.stack([centers[i % 5] + rng.standard_normal(64) for i in range(300)])
    splits = np.stack([rng.choice([1, 1, 2, 0], size=300) for _ in range(3)], axis=1)
    groups = [f"g{i // 3}" for i in range(300)]
    res = linear_probe(x, labels, splits, groups=groups, cs=(1e-3, 1e-1, 10.0))
    assert set(res.top1) == {"split1", "split2", "split3"} and res.mean > 95
    assert all(c in (1e-3, 1e-1, 10.0) for c in res.chosen_c.values())
    assert all(len(v) == 3 for v in res.validation.values())
    # random labels: chance level, not a leak from validation into test
    shuffled = list(np.random.default_rng(1).permutation(labels))
    assert linear_probe(x, shuffled, splits, groups=groups, cs=(1e-2, 1.0)).mean < 50
    with pytest.raises(MilnceError, match="no test"):
        linear_probe(x, labels, np.ones((300, 1)))
