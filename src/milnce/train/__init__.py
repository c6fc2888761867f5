"""MIL-NCE training and fine-tuning (``pip install 'milnce[train]'``).

``import milnce`` does not import this package. Public names load on first use::

    from milnce.train import milnce_loss, train, TrainConfig, make_synthetic
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "milnce_loss": "milnce.train.loss",
    "TrainConfig": "milnce.train.config",
    "train": "milnce.train.trainer",
    "resolve_config": "milnce.train.trainer",
    "retrieval_metrics": "milnce.train.trainer",
    "make_synthetic": "milnce.train.synthetic",
    "all_gather_with_grad": "milnce.train.dist",
    "SyncBatchNorm3d": "milnce.train.dist",
    "load_training_checkpoint": "milnce.train.checkpoint",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'milnce.train' has no attribute {name!r}")
