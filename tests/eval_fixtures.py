"""Shared by the eval and train tests: small benchmark folders and runs (fixtures and helpers)."""

from __future__ import annotations
