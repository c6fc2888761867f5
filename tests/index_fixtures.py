"""Shared by the index, search, extract and video-pipeline tests: small indexes and stores built
once (fixtures and helpers)."""

from __future__ import annotations
