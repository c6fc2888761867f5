"""The docs tell clone users one install spelling: ``pip install -e '.[EXTRA]'`` as the README's
Install section does (issue 24: the README said ``pip install 'milnce[train]'`` elsewhere)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_docs_install_extras_the_way_the_install_section_does():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    bad = [f"{p.name}:{i}: {line.strip()}" for p in pages for i, line in enumerate(p.read_text().splitlines(), 1)
           if re.search(r"pip install ['\"]?milnce\[", line)]
    assert not bad, "use pip install -e '.[EXTRA]' (the clone's install):\n" + "\n".join(bad)
    assert "pip install -e '.[train]'" in (ROOT / "README.md").read_text()
