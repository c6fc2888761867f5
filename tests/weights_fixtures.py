"""Shared by the weights, download and mirror tests: published-format checkpoints served from a
local HTTP server on 127.0.0.1 (fixtures and helpers)."""

from __future__ import annotations
