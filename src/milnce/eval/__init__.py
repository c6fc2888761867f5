"""Benchmark evaluation: zero-shot YouCook2 / MSR-VTT retrieval, the HMDB-51 and UCF-101 linear
probes, and CrossTask zero-shot step localisation (``evaluate_crosstask``).

>>> from milnce.eval import evaluate, write_outputs                    # doctest: +SKIP
>>> result = evaluate(model, "youcook2", "/data/youcook2")             # doctest: +SKIP
>>> result.metrics["R@1"]                                              # doctest: +SKIP

The protocol is ``milnce.eval.protocol``; metrics ``milnce.eval.metrics``; the probe
``milnce.eval.linear_probe`` (needs scikit-learn: ``pip install 'milnce[eval]'``).
"""

from __future__ import annotations

from .cache import EmbeddingCache, default_cache_dir
from .crosstask import load_release
from .crosstask_run import crosstask_dict, evaluate_crosstask, format_crosstask, write_crosstask
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
    "evaluate_crosstask",
    "format_table",
    "load_benchmark",
    "load_release",
    "published",
    "result_dict",
    "retrieval_metrics",
    "retrieval_ranks",
    "window_starts",
    "write_crosstask",
    "write_outputs",
    "crosstask_dict", "format_crosstask",
]
