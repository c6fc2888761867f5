"""JSON schemas the OpenAPI document gives for bodies that the routes build as plain dicts: the
search response's moments with the transcript fields (``milnce.index.hybrid``)."""

from __future__ import annotations

from typing import Any

__all__ = ["CUE_SCHEMA", "MOMENT_SCHEMA", "SEARCH_RESPONSE"]

_NUM_OR_NULL: dict[str, Any] = {"anyOf": [{"type": "number"}, {"type": "null"}]}

CUE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A subtitle cue that matched the query's words and overlaps the moment (plain text, never HTML)",
    "properties": {
        "start": {"type": "number", "description": "seconds from the video's start"},
        "end": {"type": "number", "description": "seconds from the video's start"},
        "text": {"type": "string", "description": "the cue's text, markup stripped"},
        "lang": {"anyOf": [{"type": "string"}, {"type": "null"}],
                 "description": "language tag of the subtitle file or stream (null: unknown)"},
        "matches": {"type": "array", "description": "[i, j): character offsets in text of each matched word",
                    "items": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}},
    },
    "required": ["start", "end", "text", "lang", "matches"],
}

MOMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "video_id": {"type": "integer"},
        "start": {"type": "number"},
        "end": {"type": "number"},
        "peak": {"type": "number"},
        "score": {"type": "number", "description": "what ranks results: the dot product (visual), or the fused "
                  "score visual + speech_weight x speech_score x the query's visual scale (hybrid), or "
                  "speech_score x that scale (speech)"},
        "cosine": _NUM_OR_NULL,
        "percentile": _NUM_OR_NULL,
        "visual_score": {**_NUM_OR_NULL, "description": "the peak window's dot product (hybrid and speech modes)"},
        "speech_score": {**_NUM_OR_NULL, "description": "the peak window's speech score, 0..1 (hybrid and speech)"},
        "cues": {"anyOf": [{"type": "array", "items": CUE_SCHEMA}, {"type": "null"}],
                 "description": "matched cues overlapping the moment, in time order (null in visual mode)"},
    },
    "additionalProperties": True,
}

SEARCH_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the moments, best first",
        "content": {"application/json": {"schema": {
            "type": "object",
            "properties": {
                "mode": {"type": "string", "enum": ["visual", "speech", "hybrid"],
                         "description": "the scoring that ran (the request's, or the default rule)"},
                "speech_weight": {**_NUM_OR_NULL, "description": "the weight used (hybrid), else null"},
                "results": {"type": "array", "items": MOMENT_SCHEMA},
                "message": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
            "additionalProperties": True,
        }}},
    },
}
