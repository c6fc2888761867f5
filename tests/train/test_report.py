"""``milnce.train.report``: Held-out retrieval during training and the run's ``metrics.jsonl`` (and TensorBoard)
log."""

from __future__ import annotations

import importlib.util

import pytest
import torch

WEBDATASET_INSTALLED = importlib.util.find_spec("webdataset") is not None
needs_webdataset = pytest.mark.skipif(not WEBDATASET_INSTALLED, reason="webdataset (the train extra) is not installed")



def test_retrieval_metrics_count_ties_against_the_model():
    from milnce.train import retrieval_metrics

    m = retrieval_metrics(torch.ones(10, 4), torch.ones(10, 4))  # collapsed embeddings
    assert m["R@1"] == 0 and m["median_rank"] == 10 and m["chance_R@1"] == 10
    eye = torch.eye(10)
    assert retrieval_metrics(eye, eye)["R@1"] == 100


# ----------------------------------------------------------------------------- divergence

@needs_webdataset
def test_retrieval_metrics_rank_non_finite_scores_last():
    from milnce.train import retrieval_metrics

    eye = torch.eye(4)
    nan = torch.full((4, 4), float("nan"))
    m = retrieval_metrics(nan, nan)
    assert m["R@1"] == 0 and m["median_rank"] == 4
    v = eye.clone()
    v[2, 0] = float("inf")  # one video's embedding broken: its score is inf for every text
    m = retrieval_metrics(eye, v)
    assert m["R@1"] < 100
