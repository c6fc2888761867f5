"""Tokenizer of the S3D text tower: words to the ids of the published vocabulary.

Rules (``model.md``): lower-case the sentence, take the matches of ``[\\w']+``, keep the
words found in the vocabulary, keep the first ``max_words`` (16), right-pad with id 0.
The word at position ``i`` of the vocabulary has id ``i + 1``; id 0 is padding.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from .errors import MilnceError, MissingFileError, UsageError

__all__ = ["Tokenizer", "load_vocab", "VocabularyError", "MAX_WORDS"]

MAX_WORDS = 16
_WORD_RE = re.compile(r"[\w']+")


class VocabularyError(MilnceError, ValueError):
    """The vocabulary file or array is not a usable word list."""


def load_vocab(path: str | os.PathLike[str]) -> np.ndarray:
    """Load a vocabulary ``.npy`` (1-D array of strings) without unpickling anything."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingFileError(f"vocabulary file not found: {path}")
    if os.path.isdir(path):
        raise VocabularyError(f"vocabulary path is a directory, not a .npy file: {path}")
    try:
        words = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise VocabularyError(
                f"{path} is a pickled (object) array; milnce refuses to unpickle files because "
                "that can run arbitrary code. Re-save it as a plain unicode array, e.g. "
                "np.save(out, np.asarray(words, dtype=str)) on a trusted machine."
            ) from exc
        raise VocabularyError(f"{path} is not a valid .npy file: {exc}") from exc
    except (OSError, EOFError) as exc:
        raise VocabularyError(f"{path} is not a readable .npy file: {exc}") from exc
    if isinstance(words, np.lib.npyio.NpzFile):  # pragma: no cover - np.load of .npz
        raise VocabularyError(f"{path} is an .npz archive; expected a 1-D .npy word array")
    return _check_vocab_array(words, source=path)


def _check_vocab_array(words: np.ndarray, source: str = "vocabulary") -> np.ndarray:
    if words.ndim != 1:
        raise VocabularyError(
            f"{source}: expected a 1-D array of words, got shape {tuple(words.shape)}"
        )
    if words.dtype.kind not in ("U", "S"):
        raise VocabularyError(
            f"{source}: expected an array of strings, got dtype {words.dtype}"
        )
    if words.dtype.kind == "S":
        words = np.char.decode(words, "utf-8")
    if len(words) == 0:
        raise VocabularyError(f"{source}: the vocabulary is empty")
    return words


class Tokenizer:
    """Turns sentences into ``LongTensor[B, max_words]`` of word ids.

    >>> tok = Tokenizer(["open", "door"])
    >>> tok(["Open the door!"]).tolist()[0][:3]
    [1, 2, 0]
    """

    def __init__(self, vocab: Sequence[str] | np.ndarray, max_words: int = MAX_WORDS) -> None:
        words = _check_vocab_array(np.asarray(vocab, dtype=str) if not isinstance(vocab, np.ndarray) else vocab)
        if max_words < 1:
            raise UsageError(f"max_words must be >= 1, got {max_words}")
        self.max_words = max_words
        self.vocab: np.ndarray = words
        # Later duplicates win, as in the reference dictionary comprehension.
        self.word_to_id: dict[str, int] = {str(w): i + 1 for i, w in enumerate(words.tolist())}

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], max_words: int = MAX_WORDS) -> Tokenizer:
        """Load the tokenizer from a vocabulary ``.npy`` such as ``s3d_dict.npy``."""
        return cls(load_vocab(path), max_words=max_words)

    @property
    def vocab_size(self) -> int:
        """Number of rows of the word embedding: words + 1 (padding)."""
        return len(self.vocab) + 1

    @staticmethod
    def split(sentence: str) -> list[str]:
        """Lower-case and split a sentence into ``[\\w']+`` words (before vocabulary lookup)."""
        return _WORD_RE.findall(str(sentence).lower())

    def words(self, sentence: str) -> list[str]:
        """The known words of ``sentence`` that the model will see (at most ``max_words``)."""
        return [w for w in self.split(sentence) if w in self.word_to_id][: self.max_words]

    def unknown_words(self, sentence: str) -> list[str]:
        """Words of ``sentence`` that are not in the vocabulary (they are dropped)."""
        return [w for w in self.split(sentence) if w not in self.word_to_id]

    def query_problem(self, sentence: str) -> str | None:
        """Why ``sentence`` cannot serve as a search query (empty, no known word), or None."""
        if not sentence.strip():
            return "the query is empty"
        if not self.words(sentence):
            unknown = self.unknown_words(sentence)
            return (f"no word of {sentence!r} is in the model's vocabulary"
                    + (f" (unknown: {', '.join(unknown[:8])})" if unknown else ""))
        return None

    def encode(self, sentence: str) -> list[int]:
        """Ids of one sentence, padded with 0 to ``max_words``."""
        ids = [self.word_to_id[w] for w in self.words(sentence)]
        return ids + [0] * (self.max_words - len(ids))

    def __call__(self, sentences: Iterable[str] | str) -> torch.Tensor:
        if isinstance(sentences, str):
            raise TypeError("Tokenizer expects a list of sentences, not a single string; wrap it: [text]")
        rows = [self.encode(s) for s in _as_sentence_list(sentences)]
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), self.max_words)

    def __len__(self) -> int:
        return len(self.vocab)


def _as_sentence_list(sentences: Iterable[str]) -> list[str]:
    out = list(sentences)
    if not out:
        raise UsageError("empty list of sentences: pass at least one text")
    for i, s in enumerate(out):
        if not isinstance(s, str):
            raise TypeError(f"sentence {i} is {type(s).__name__}, expected str")
    return out
