"""Where an index's weights came from: ``Index.create`` records the model's ``weights_source``
(``milnce.api.load_model``: a registry name, or the absolute path of a weights file or a
``milnce train`` run folder, and the vocabulary's path) beside the weights fingerprint, so that
``search``, ``serve`` and ``localize`` load the same model without ``--weights``.

``recorded_weights(folder)`` reads the record; ``RecordedWeights.weights_vocab()`` says what to
load (``IndexModelError`` when the recorded file is gone) and ``RecordedWeights.check(model)``
refuses weights that changed since (another fingerprint). An index built before the record
existed has none: the default weights are loaded, as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..printable import show_path
from ..protocols import Encoder
from .errors import IndexMismatchError

__all__ = ["RecordedWeights", "IndexModelError", "recorded_weights"]

KINDS = {"registry": "published weights", "file": "weights file", "run": "run folder"}


class IndexModelError(IndexMismatchError):
    """The weights an index records are gone or changed: pass ``--weights``."""


@dataclass(frozen=True)
class RecordedWeights:
    """An index's record of its weights: ``kind`` (registry, file, run), ``weights`` (a registry
    name or an absolute path), ``vocab`` (absolute path or None), ``fingerprint`` (the weights id)."""

    directory: str
    kind: str
    weights: str
    vocab: str | None
    fingerprint: str

    def describe(self) -> str:
        """``run folder /abs/runs/synthetic (fingerprint 1a2b...)``."""
        return f"{KINDS.get(self.kind, 'weights')} {show_path(self.weights)} (fingerprint {self.fingerprint})"

    def _fail(self, what: str) -> IndexModelError:
        return IndexModelError(f"the index at {show_path(self.directory)} was built with the {self.describe()}, "
                               f"which {what}; pass --weights (and --vocab) with the weights that built it")

    def weights_vocab(self, vocab: str | None = None) -> tuple[str, str | None]:
        """The ``(weights, vocab)`` to load: the recorded ones (``vocab`` given wins; a recorded
        word list that is gone is left to the usual search beside the weights)."""
        if self.kind != "registry" and not os.path.exists(self.weights):
            raise self._fail("is no longer there (moved or deleted)")
        if vocab is None and self.vocab is not None and os.path.isfile(self.vocab):
            vocab = self.vocab
        return self.weights, vocab

    def check(self, model: Encoder) -> None:
        """Refuse a model loaded from the record whose fingerprint is not the index's."""
        wid = getattr(model, "weights_id", None)
        if wid != self.fingerprint:
            raise self._fail(f"has changed since (its fingerprint is now {wid})")


def recorded_weights(directory: str | os.PathLike[str], collection: str | None = None) -> RecordedWeights | None:
    """The weights record of the index at ``directory`` (None for an index built before records,
    or from feature files); ``collection``: of a Milvus ``directory`` (``milnce.index.backends``)."""
    from .backends import open_index

    with open_index(directory, collection=collection) as index:
        src: Any = index.meta.get("weights_source")
        if not isinstance(src, dict) or not isinstance(src.get("weights"), str) or src.get("kind") not in KINDS:
            return None
        vocab = src.get("vocab")
        return RecordedWeights(index.directory, str(src["kind"]), src["weights"],
                               vocab if isinstance(vocab, str) else None, index.weights_id)
