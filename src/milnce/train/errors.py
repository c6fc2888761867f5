"""The error a training run stops with when the run itself goes wrong (not its input).

(To be unified with ``milnce.errors.TrainingError`` when that lands: same name, same bases.)
"""

from __future__ import annotations

from ..errors import MilnceError

__all__ = ["TrainingError"]


class TrainingError(MilnceError, RuntimeError):
    """A run that cannot go on: a non-finite loss, weights, BN statistics or embeddings; too many
    unreadable samples; a checkpoint that cannot be written."""
