"""The error a training run stops with when the run itself goes wrong (not its input):
``milnce.errors.TrainingError``, re-exported here for the training modules."""

from __future__ import annotations

from ..errors import TrainingError

__all__ = ["TrainingError"]
