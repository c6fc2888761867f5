"""Tokenizer rules, re-derived here and checked on the 4,350 real benchmark captions."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from milnce.text import Tokenizer, VocabularyError, load_vocab

DATA = Path(__file__).resolve().parent / "data"


def _captions() -> list[str]:
    """The YouCook2 validation then MSR-VTT 1k-A test captions, one a line (tests/data/README.md)."""
    text = (DATA / "captions.txt").read_text(encoding="utf-8")
    return text.split("\n")[:-1]


def _is_word_char(ch: str) -> bool:
    # Python's Unicode \w: letters, digits (any script) and underscore.
    return ch.isalnum() or ch == "_"


def _reference_words(sentence: str) -> list[str]:
    """model.md's rule without a regex: lower-case, runs of word characters and apostrophes."""
    words, cur = [], []
    for ch in sentence.lower():
        if _is_word_char(ch) or ch == "'":
            cur.append(ch)
        elif cur:
            words.append("".join(cur))
            cur = []
    if cur:
        words.append("".join(cur))
    return words


def test_rules_on_real_captions():
    captions = _captions()
    assert len(captions) == 4350
    distinct = sorted({w for c in captions for w in _reference_words(c)})
    vocab = [w for i, w in enumerate(distinct) if i % 3]  # a third of the words are unknown
    pos = {w: i + 1 for i, w in enumerate(vocab)}
    tok = Tokenizer(vocab)
    ids = tok(captions)
    assert ids.shape == (4350, 16) and ids.dtype == torch.long
    truncated = dropped = 0
    for caption, row in zip(captions, ids.tolist()):
        known = [pos[w] for w in _reference_words(caption) if w in pos]
        dropped += len(_reference_words(caption)) - len(known)
        truncated += len(known) > 16
        expected = known[:16] + [0] * (16 - len(known[:16]))
        assert row == expected, caption
    assert truncated > 0 and dropped > 0  # the data exercises both rules


def test_lowercase_apostrophes_and_unicode():
    tok = Tokenizer(["it's", "café", "open", "door", "snake_case"])
    assert tok.split("It's a CAFÉ; open-door snake_case!") == ["it's", "a", "café", "open", "door", "snake_case"]
    assert tok.encode("It's OPEN") == [1, 3] + [0] * 14


def test_first_16_known_words_and_padding():
    tok = Tokenizer([f"w{i}" for i in range(40)])
    text = " ".join(f"w{i} junk" for i in range(30))
    assert tok.encode(text) == list(range(1, 17))
    assert tok([""]).tolist() == [[0] * 16]
    assert tok(["   "]).tolist() == [[0] * 16]
    assert tok(["nothing known here"]).tolist() == [[0] * 16]


def test_duplicate_vocabulary_words_take_the_last_id():
    tok = Tokenizer(["a", "b", "a"])
    assert tok.encode("a b")[:2] == [3, 2]


def test_input_errors():
    tok = Tokenizer(["a"])
    with pytest.raises(ValueError, match="empty"):
        tok([])
    with pytest.raises(TypeError, match="list of sentences"):
        tok("a")
    with pytest.raises(TypeError, match="sentence 1"):
        tok(["a", 3])  # type: ignore[list-item]


def test_vocab_file_roundtrip_and_errors(tmp_path):
    good = tmp_path / "v.npy"
    np.save(good, np.array(["open", "door"]), allow_pickle=False)
    assert load_vocab(good).tolist() == ["open", "door"]
    assert Tokenizer.from_file(good).vocab_size == 3

    pickled = tmp_path / "p.npy"
    np.save(pickled, np.array(["open", "door"], dtype=object), allow_pickle=True)
    with pytest.raises(VocabularyError, match="pickled"):
        load_vocab(pickled)

    two_d = tmp_path / "2d.npy"
    np.save(two_d, np.array([["a", "b"]]))
    with pytest.raises(VocabularyError, match="1-D"):
        load_vocab(two_d)

    numbers = tmp_path / "n.npy"
    np.save(numbers, np.arange(3))
    with pytest.raises(VocabularyError, match="strings"):
        load_vocab(numbers)

    junk = tmp_path / "junk.npy"
    junk.write_bytes(pickle.dumps(["a"]))
    with pytest.raises(VocabularyError):
        load_vocab(junk)

    with pytest.raises(FileNotFoundError):
        load_vocab(tmp_path / "missing.npy")
    with pytest.raises(VocabularyError, match="directory"):
        load_vocab(tmp_path)
