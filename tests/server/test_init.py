"""``milnce.server``'s ``__init__.py``: the names the package exports."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")



@pytest.mark.slow
def test_package_imports_without_fastapi():
    import subprocess

    code = ("import sys; sys.modules['fastapi'] = None; sys.modules['uvicorn'] = None\n"
            "import milnce, milnce.cli; milnce.cli.build_parser(); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
