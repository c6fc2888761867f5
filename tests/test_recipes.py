"""``milnce.recipes``: Feature recipes."""

from __future__ import annotations

import pytest

from milnce.errors import UsageError
from milnce.recipes import check_conflicts, get_recipe


def test_matching_options_are_accepted():
    check_conflicts(get_recipe("univl"), {"fps": 16.0, "num_frames": 16, "pad": "zeros", "features": ["mixed_5c"]})
    with pytest.raises(UsageError, match="unknown recipe"):
        get_recipe("nope")
