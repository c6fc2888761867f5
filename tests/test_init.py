"""``milnce``'s ``__init__.py``: the names the package exports."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


@pytest.mark.slow
def test_lazy_export():
    """The index and video names load their package on first use, not at ``import milnce``, and
    are then the package's own objects; every name of ``__all__`` resolves."""
    code = textwrap.dedent("""
        import sys
        import milnce
        print("milnce.index" in sys.modules, "milnce.video" in sys.modules)
        index = milnce.Index
        print("milnce.index" in sys.modules, index.__module__, index is sys.modules["milnce.index"].Index)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "False False"
    assert out[1] == "True milnce.index.writer True"
    # every exported name resolves; a lazy one to its package's object; a wrong name is an AttributeError
    import milnce.index
    import milnce.video

    for name in milnce.__all__:
        assert getattr(milnce, name) is not None, name
    for name, module in milnce._LAZY.items():
        assert getattr(milnce, name) is getattr(sys.modules[module], name), name
    with pytest.raises(AttributeError, match="module 'milnce' has no attribute 'Indexx'"):
        milnce.Indexx  # noqa: B018
