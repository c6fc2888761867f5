"""HMDB-51 linear probe: a linear classifier on frozen features, per split, C chosen on training data.

For each split: the training videos (flag 1) are divided into a fitting part and a validation
part (``val_fraction`` of them, chosen by a seeded shuffle of *source videos*, so that the
several clips HMDB cut from one recording never sit on both sides); for every ``C`` of the grid
a standardised linear SVM (scikit-learn ``StandardScaler`` + ``LinearSVC``) is fitted on the
fitting part and scored on the validation part; the best ``C`` (ties: the smaller) is refitted
on the whole training part and its top-1 accuracy reported on the test videos (flag 2).
scikit-learn is imported here only (``pip install milnce[eval]``).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import MilnceError, UsageError

__all__ = ["DEFAULT_CS", "ProbeResult", "linear_probe", "source_group"]

DEFAULT_CS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
_GROUP_RE = re.compile(r"_\d+$")


def source_group(video_id: str) -> str:
    """The recording an HMDB clip was cut from: the file stem without its ``_<n>`` clip number."""
    stem = video_id.rsplit(".", 1)[0] if "." in video_id else video_id
    return _GROUP_RE.sub("", stem)


@dataclass
class ProbeResult:
    """Top-1 accuracy (percent) per split, their mean, and how C was chosen."""

    top1: dict[str, float] = field(default_factory=dict)
    mean: float = float("nan")
    chosen_c: dict[str, float] = field(default_factory=dict)
    validation: dict[str, dict[str, float]] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"top1": self.top1, "mean_top1": self.mean, "chosen_C": self.chosen_c,
                "validation_top1": self.validation, "counts": self.counts}


def _sklearn():
    try:
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import LinearSVC
    except ImportError:
        raise MilnceError("the HMDB-51 linear probe needs scikit-learn: pip install 'milnce[eval]' "
                          "(or pip install scikit-learn)") from None
    return make_pipeline, StandardScaler, LinearSVC


def _fit_score(x_fit, y_fit, x_eval, y_eval, c: float, seed: int) -> tuple[float, object]:
    make_pipeline, StandardScaler, LinearSVC = _sklearn()
    clf = make_pipeline(StandardScaler(), LinearSVC(C=c, max_iter=5000, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at tiny C is expected and harmless
        clf.fit(x_fit, y_fit)
    acc = float((clf.predict(x_eval) == y_eval).mean()) if len(y_eval) else float("nan")
    return acc, clf


def _holdout(groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the validation rows: whole groups, about ``fraction`` of the rows."""
    uniq = np.unique(groups)
    order = np.random.default_rng(seed).permutation(len(uniq))
    target = fraction * len(groups)
    val = np.zeros(len(groups), bool)
    for g in uniq[order]:
        if val.sum() >= target:
            break
        val |= groups == g
    return val


def linear_probe(
    features: np.ndarray,
    labels: Sequence[str],
    splits: np.ndarray,
    *,
    groups: Sequence[str] | None = None,
    cs: Sequence[float] = DEFAULT_CS,
    val_fraction: float = 0.2,
    seed: int = 0,
    split_names: Sequence[str] | None = None,
) -> ProbeResult:
    """Train/test a linear classifier per split.

    ``features``: ``N x D``; ``labels``: N class names; ``splits``: ``N x S`` flags (1 train,
    2 test, 0 unused); ``groups``: N source-video ids for the validation hold-out (default:
    every row its own group)."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    sp = np.asarray(splits)
    if x.ndim != 2 or len(x) != len(y) or sp.ndim != 2 or len(sp) != len(x):
        raise UsageError(f"features N x D, labels N and splits N x S must agree, got {x.shape}, {y.shape}, {sp.shape}")
    if not np.isfinite(x).all():
        raise MilnceError("features contain NaN or infinite values")
    if not cs or any(not (c > 0) for c in cs):
        raise UsageError(f"the C grid must be positive numbers, got {list(cs)!r}")
    if not 0 < val_fraction < 1:
        raise UsageError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    g = np.asarray(groups) if groups is not None else np.arange(len(x)).astype(str)
    names = list(split_names or [f"split{k + 1}" for k in range(sp.shape[1])])
    res = ProbeResult()
    for k, name in enumerate(names):
        train, test = sp[:, k] == 1, sp[:, k] == 2
        if not train.any() or not test.any():
            raise MilnceError(f"{name}: no {'training' if not train.any() else 'test'} videos among those evaluated")
        if len(np.unique(y[train])) < 2:
            raise MilnceError(f"{name}: the training videos evaluated cover fewer than 2 classes")
        val = np.zeros(len(x), bool)
        val[np.flatnonzero(train)] = _holdout(g[train], val_fraction, seed + k)
        fit = train & ~val
        scores: dict[str, float] = {}
        if len(np.unique(y[fit])) >= 2 and val.any() and len(cs) > 1:
            for c in cs:
                scores[f"{c:g}"] = 100.0 * _fit_score(x[fit], y[fit], x[val], y[val], c, seed)[0]
            best = max(cs, key=lambda c: (scores[f"{c:g}"], -c))
        else:
            best = cs[len(cs) // 2] if len(cs) > 1 else cs[0]
        acc, _ = _fit_score(x[train], y[train], x[test], y[test], best, seed)
        res.top1[name] = 100.0 * acc
        res.chosen_c[name] = float(best)
        res.validation[name] = scores
        res.counts[name] = {"train": int(train.sum()), "validation": int(val.sum()), "test": int(test.sum()),
                            "classes": len(np.unique(y[train]))}
    res.mean = float(np.mean(list(res.top1.values())))
    return res
