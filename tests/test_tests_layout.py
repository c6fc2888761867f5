"""The tests mirror the code: where a test file may sit and what it may be named.

- ``tests/test_<module>.py`` tests ``src/milnce/<module>.py``; ``tests/<package>/test_<module>.py``
  tests ``src/milnce/<package>/<module>.py``; ``test_init.py`` tests a package's ``__init__.py``
  (``tests/test_init.py``: ``milnce/__init__.py``).
- ``tests/cli/test_<module>.py`` runs the commands of ``src/milnce/commands/<module>.py`` end to end
  (``main(argv)`` or a subprocess); ``tests/browser/test_<name>.py`` drives the page of
  ``src/milnce/static/<name>.js`` in Chromium; ``tests/bench/test_<script>.py`` runs
  ``benchmarks/<script>.py``. Those three folders mark their tests ``cli``, ``browser``, ``bench``
  (tests/conftest.py), so that ``-m "not browser"`` and the like need no list of files.
- The exceptions: whole-repository checks that test no single module sit at the top of tests/
  and are listed in ``REPOSITORY_CHECKS`` (documentation pages, lint, the layer rules, packaging,
  this file). Nothing else: a test of a module moves to that module's file.

Helper modules (``conftest.py``, ``video_fixtures.py``, ...) have names that do not start with
``test_``; every test folder is a package (``__init__.py``) so that two folders may hold files of
the same name (``tests/video/test_probe.py``, ``tests/eval/test_probe.py``)."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
SRC = ROOT / "src" / "milnce"
REPOSITORY_CHECKS = re.compile(r"test_(layout_rules|lint|packaging|tests_layout|docs_\w+)\.py")
FOLDERS = {
    "cli": lambda name: (SRC / "commands" / f"{name}.py").is_file(),
    "browser": lambda name: any((SRC / "static").glob(f"{name}.*")),
    "bench": lambda name: (ROOT / "benchmarks" / f"{name}.py").is_file(),
}


def _tested_module(path: Path) -> bool:
    """Whether a test file's place and name name a real module (see the module docstring)."""
    rel = path.relative_to(TESTS)
    name = rel.stem[len("test_"):]
    if len(rel.parts) == 1:
        return (SRC / f"{name}.py").is_file() or name == "init" or bool(REPOSITORY_CHECKS.fullmatch(rel.name))
    if len(rel.parts) != 2:
        return False
    folder = rel.parts[0]
    if folder in FOLDERS:
        return FOLDERS[folder](name)
    package = SRC / folder
    if not (package / "__init__.py").is_file():
        return False
    return (package / f"{name}.py").is_file() or name == "init"


def test_every_test_file_names_a_module_it_tests():
    files = sorted(p for p in TESTS.rglob("test_*.py") if "data" not in p.relative_to(TESTS).parts)
    assert len(files) > 50
    misplaced = [str(p.relative_to(ROOT)) for p in files if not _tested_module(p)]
    assert misplaced == [], "test files that name no module (see tests/test_tests_layout.py): " + ", ".join(misplaced)


def test_the_rule_refuses_what_it_should(tmp_path):
    ok = [TESTS / "test_windows.py", TESTS / "index" / "test_ranking.py", TESTS / "cli" / "test_search.py",
          TESTS / "bench" / "test_bench_index.py", TESTS / "browser" / "test_app.py", TESTS / "test_init.py",
          TESTS / "server" / "test_init.py", TESTS / "test_docs_build.py"]
    bad = [TESTS / "test_hostile.py", TESTS / "test_search_trust.py", TESTS / "index" / "test_hostile_index.py",
           TESTS / "cli" / "test_index.py", TESTS / "nowhere" / "test_windows.py", TESTS / "index" / "deep" / "test_ranking.py",
           TESTS / "bench" / "test_redesign.py", TESTS / "test_index.py"]
    assert [p.name for p in ok if not _tested_module(p)] == []
    assert [p.name for p in bad if _tested_module(p)] == []


def test_every_test_folder_is_a_package():
    folders = {p.parent for p in TESTS.rglob("test_*.py") if "data" not in p.relative_to(TESTS).parts}
    assert sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").is_file()) == []


def test_folder_markers_are_declared_and_set():
    import conftest

    tomllib = pytest.importorskip("tomllib", reason="Python >= 3.11 reads pyproject.toml")
    ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert {m.split(":")[0] for m in ini["markers"]} == {"slow", *FOLDERS}
    assert "--strict-markers" in ini["addopts"]
    assert set(conftest.FOLDER_MARKERS) == set(FOLDERS)
    items = {where: SimpleNamespace(path=TESTS / where / "test_x.py", marks=[]) for where in ("cli", "browser", "bench", "index")}
    for item in items.values():
        item.add_marker = item.marks.append
    conftest.pytest_collection_modifyitems(None, list(items.values()))
    assert {where: [m.name for m in item.marks] for where, item in items.items()} == {
        "cli": ["cli"], "browser": ["browser"], "bench": ["bench"], "index": []}
