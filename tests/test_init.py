"""``milnce``'s ``__init__.py``: the names the package exports."""

from __future__ import annotations

import pytest

import milnce
from milnce.index import (
    Index,
)

pytestmark = pytest.mark.usefixtures("reuse_model")  # CLI commands reuse the loaded model


def test_lazy_export():
    assert milnce.Index is Index
