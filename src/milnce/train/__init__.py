"""MIL-NCE training and fine-tuning (``pip install 'milnce[train]'``).

``import milnce`` does not import this package. Public names load on first use::

    from milnce.train import milnce_loss, train, TrainConfig, make_synthetic
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names' types for mypy; at run time they load on first use (__getattr__)
    from .checkpoint import load_training_checkpoint
    from .config import TrainConfig
    from .dist import SyncBatchNorm3d, all_gather_with_grad, distributed
    from .fallback import fallback_model, held_out, held_out_data
    from .loss import milnce_loss
    from .synthetic import make_synthetic, to_shards
    from .trainer import resolve_config, retrieval_metrics, train

_LAZY = {
    "milnce_loss": "milnce.train.loss",
    "TrainConfig": "milnce.train.config",
    "train": "milnce.train.trainer",
    "resolve_config": "milnce.train.trainer",
    "distributed": "milnce.train.dist",
    "to_shards": "milnce.train.synthetic",
    "retrieval_metrics": "milnce.train.trainer",
    "make_synthetic": "milnce.train.synthetic",
    "all_gather_with_grad": "milnce.train.dist",
    "SyncBatchNorm3d": "milnce.train.dist",
    "load_training_checkpoint": "milnce.train.checkpoint",
    "fallback_model": "milnce.train.fallback",
    "held_out": "milnce.train.fallback",
    "held_out_data": "milnce.train.fallback",
}

__all__ = [  # = list(_LAZY), spelled out for linters
    "milnce_loss",
    "TrainConfig",
    "train",
    "resolve_config",
    "distributed",
    "to_shards",
    "retrieval_metrics",
    "make_synthetic",
    "all_gather_with_grad",
    "SyncBatchNorm3d",
    "load_training_checkpoint",
    "fallback_model",
    "held_out",
    "held_out_data",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'milnce.train' has no attribute {name!r}")
