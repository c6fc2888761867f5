"""The documentation site (mkdocs.yml, docs/) builds with ``mkdocs build --strict``, includes the
root ARCHITECTURE.md and CHANGELOG.md, and leaves docs/pending/ out; the README stays short."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_readme_is_short_and_points_to_the_docs():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    assert "./run.sh" in text and "./test.sh" in text
    for page in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / page).is_file(), page


def test_every_page_is_in_the_navigation():
    """A page left out of ``nav`` would be built but unreachable (mkdocs only says so as info)."""
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f": {page.name}" in nav, f"{page.name} is not in mkdocs.yml's nav"


@pytest.mark.slow
def test_site_builds_strict(tmp_path):
    for module in ("mkdocs", "material"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[docs]')")
    site = tmp_path / "site"
    # from another folder: the snippets' base path is the config's folder, not the working directory
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                        "-d", str(site)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    arch = (site / "architecture" / "index.html").read_text()
    assert "What a new feature touches" in arch and "--8&lt;--" not in arch
    assert "Changelog" in (site / "changelog" / "index.html").read_text()
    assert (site / "train_curve.png").is_file()
    assert 'src="../train_curve.png"' in (site / "train" / "index.html").read_text()
    assert not (site / "pending").exists()
    for page in ("extract", "recipes", "search", "clip", "serve", "train", "eval", "export", "weights", "performance"):
        assert (site / page / "index.html").is_file(), page
