"""Benchmark evaluation: zero-shot YouCook2 / MSR-VTT retrieval and the HMDB-51 linear probe.

>>> from milnce.eval import evaluate, write_outputs                    # doctest: +SKIP
>>> result = evaluate(model, "youcook2", "/data/youcook2")             # doctest: +SKIP
>>> result.metrics["R@1"]                                              # doctest: +SKIP

The protocol is ``milnce.eval.protocol``; metrics ``milnce.eval.metrics``; the probe
``milnce.eval.probe`` (needs scikit-learn: ``pip install 'milnce[eval]'``).
"""

from __future__ import annotations

from .cache import EmbeddingCache, default_cache_dir
from .datasets import (
    BENCHMARKS,
    Benchmark,
    EvalItem,
    VideoResolver,
    default_annotations,
    load_benchmark,
)
from .metrics import retrieval_metrics, retrieval_ranks
from .protocol import EvalSettings, window_starts
from .report import format_table, published, result_dict, write_outputs
from .run import EvalResult, embed_clips, encode_captions, evaluate

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "EmbeddingCache",
    "EvalItem",
    "EvalResult",
    "EvalSettings",
    "VideoResolver",
    "default_annotations",
    "default_cache_dir",
    "embed_clips",
    "encode_captions",
    "evaluate",
    "format_table",
    "load_benchmark",
    "published",
    "result_dict",
    "retrieval_metrics",
    "retrieval_ranks",
    "window_starts",
    "write_outputs",
]
