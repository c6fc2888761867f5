"""Layout rules read from the source (AST): no module uses another module's private (underscore)
names, and no module imports from a layer above its own, the layers being the drawing in
ARCHITECTURE.md itself (so the document and this test agree by construction)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "milnce"


# ----- issue 16: the snapshot, no cycles, no fake model ---------------------------------------


def _imports(path: Path) -> set[str]:
    """``milnce.index`` modules a module imports (anywhere: in functions and under TYPE_CHECKING too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            out.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 1:
            out.update(a.name for a in node.names)
    return out


def test_no_import_cycle_and_no_private_reads_inside_index():
    mods = {p.stem: p for p in (SRC / "index").glob("*.py") if p.stem != "__init__"}
    graph = {m: _imports(p) & set(mods) for m, p in mods.items()}

    def visit(m: str, stack: list[str]) -> None:
        assert m not in stack, "import cycle: " + " -> ".join([*stack, m])
        for n in graph[m]:
            visit(n, [*stack, m])

    for m in graph:
        visit(m, [])
    for name, path in mods.items():  # no module reads private members defined in another module
        tree = ast.parse(path.read_text())
        own = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        own |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and node.attr not in own and isinstance(node.value, ast.Name)
                    and node.value.id not in ("os", "torch") and node.attr not in ("_replace", "_asdict")):
                pytest.fail(f"{name}.py reads {ast.unparse(node)}, a private member of another module")
        assert len(path.read_text().splitlines()) <= 600, f"{name}.py is over 600 lines"


@pytest.mark.slow
def test_imports_without_fcntl():
    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def imp(name, *a, **k):\n"
        "    if name == 'fcntl': raise ImportError('no fcntl here')\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = imp\n"
        "import milnce.index as mi\n"
        "try:\n"
        "    mi.acquire_lock('.')\n"
        "except mi.IndexFolderError as e:\n"
        "    print('locking:', e)\n"
        "import milnce.video, milnce.api, milnce.commands.search, milnce.cli\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "locking: writing to the index" in r.stdout and r.stdout.strip().endswith("ok")


# --------------------------------------------------------------------------- import cycles

SRC_LAYOUT = Path(__file__).resolve().parent.parent / "src"

# Cycles that other branches of this wave remove; the lead empties this after merging them.
KNOWN_CYCLES: dict[frozenset[str], str] = {}  # none: every cycle found is a failure


def _modules(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``) for every ``.py`` below ``root/package``."""
    out = {}
    for f in (root / package).rglob("*.py"):
        parts = list(f.relative_to(root).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return out


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its text: at the top, inside functions
    and under ``if TYPE_CHECKING`` alike (``from pkg import name`` counts ``pkg.name`` when that is a
    module, else ``pkg``)."""
    mods = _modules(root, package)
    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in mods.items():
        here = name if is_pkg else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for a in node.names:
                    if f"{target}.{a.name}" in mods:
                        deps.add(f"{target}.{a.name}")
                    elif target in mods:
                        deps.add(target)
        graph[name] = deps - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(frozenset(comp))
    return found


def test_cycle_finder_sees_function_level_and_type_checking_imports(tmp_path):
    pkg = tmp_path / "p"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .c import C\n")
    (pkg / "a.py").write_text("def f():\n    from . import b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f\n")
    (pkg / "c.py").write_text("import p.a\n")
    (pkg / "sub" / "c.py").write_text("from ..sub import d\n")
    (pkg / "sub" / "d.py").write_text("from p.sub.c import x\n")
    found = set(cycles(import_graph(tmp_path, "p")))
    assert found == {frozenset({"p.a", "p.b"}), frozenset({"p.sub.c", "p.sub.d"})}


def test_no_import_cycles():
    found = cycles(import_graph(SRC_LAYOUT, "milnce"))
    new = [sorted(c) for c in found if c not in KNOWN_CYCLES]
    assert not new, f"import cycles: {new}"
    gone = [f"{sorted(c)} ({who})" for c, who in KNOWN_CYCLES.items() if c not in found]
    assert not gone, f"these known cycles are gone: remove them from KNOWN_CYCLES: {gone}"


def test_commands_do_not_import_cli():

    import milnce.commands

    for f in Path(milnce.commands.__file__).parent.glob("*.py"):
        text = f.read_text()
        assert "from ..cli" not in text and "import milnce.cli" not in text and "from milnce.cli" not in text, f.name

ARCHITECTURE = SRC_LAYOUT.parent / "ARCHITECTURE.md"

# Both lists are empty: every finding is a failure.
ALLOWED_PRIVATE: set[str] = set()
ALLOWED_UPWARD: set[tuple[str, str]] = set()


# --------------------------------------------------------------------------- private names


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(root: Path, package: str) -> list[str]:
    """``module:line: what`` for each underscore name one module takes from another: ``from X import
    _name`` (a private module included) and ``X._name`` where ``X`` names another module of the
    package (``import p.x``, ``import p.x as m``, ``from p import x``)."""
    mods = set(import_graph(root, package))
    found: list[str] = []
    for name in sorted(mods):
        path = root.joinpath(*name.split("."))
        is_pkg = (path / "__init__.py").is_file()
        path = path / "__init__.py" if is_pkg else path.with_suffix(".py")
        here = name if is_pkg else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases: dict[str, str] = {}  # local name -> the package module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target not in mods:
                    continue
                for a in node.names:
                    full = f"{target}.{a.name}"
                    if full in mods:
                        aliases[a.asname or a.name] = full
                    if _private(a.name) and (full in mods or target != name):
                        found.append(f"{name}:{node.lineno}: from {target} import {a.name}")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in mods:
                        if a.asname:
                            aliases[a.asname] = a.name
                        else:
                            aliases[a.name.split(".")[0]] = a.name.split(".")[0]
                    if any(_private(part) for part in a.name.split(".")[1:]):
                        found.append(f"{name}:{node.lineno}: import {a.name}")
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and _private(node.attr)):
                continue
            chain: list[str] = []
            v: ast.expr = node.value
            while isinstance(v, ast.Attribute):
                chain.append(v.attr)
                v = v.value
            if not isinstance(v, ast.Name) or v.id not in aliases:
                continue
            module = ".".join([aliases[v.id], *reversed(chain)])
            if module in mods and module != name:
                found.append(f"{name}:{node.lineno}: {module}.{node.attr}")
    return found


def test_private_name_finder_sees_every_form(tmp_path):
    pkg = tmp_path / "p"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .x import _hidden\n")
    (pkg / "sub" / "x.py").write_text("_hidden = 1\n__version__ = '1'\ndef _own():\n    return _hidden\n")
    (pkg / "_secret.py").write_text("")
    (pkg / "a.py").write_text(
        "import p.sub.x\n"
        "import p.sub.x as m\n"
        "from p.sub import x\n"
        "from . import _secret\n"
        "from .sub.x import __version__, _own as own\n"
        "def f():\n"
        "    return p.sub.x._hidden, m._hidden, x._own, x.__version__\n"
    )
    (pkg / "b.py").write_text("class C:\n    _a = 1\n    def g(self):\n        return self._a, C._a\n"
                              "_b = 2\nimport os\nos._exit\n")
    found = sorted(line.split(": ", 1)[1] for line in private_uses(tmp_path, "p"))
    assert found == sorted([
        "from p.sub.x import _hidden",
        "from p import _secret",
        "from p.sub.x import _own",
        "p.sub.x._hidden",
        "p.sub.x._hidden",
        "p.sub.x._own",
    ])


def test_no_private_name_used_across_modules():
    found = [f for f in private_uses(SRC_LAYOUT, "milnce") if f.split(": ", 1)[1] not in ALLOWED_PRIVATE]
    assert not found, "make these names public where they are defined (or move them):\n" + "\n".join(found)


# --------------------------------------------------------------------------- layers

NAME = re.compile(r"(?:__init__|[A-Za-z_]\w*)\.py|[A-Za-z_]\w*/|->")


def drawn_layers(markdown: str, package: str) -> list[list[str]]:
    """The layers of the first fenced block, bottom to top: each line starting in the first column
    is one layer, its leading names (``x.py`` -> ``package.x``, ``x/`` -> ``package.x``,
    ``__init__.py`` -> ``package``; ``->`` only orders them) up to the first other word."""
    block = markdown.split("```", 2)[1].partition("\n")[2]  # after the fence's own line
    layers = []
    for line in block.splitlines():
        if not line.strip() or line[0].isspace():
            continue
        names = []
        for word in line.split():
            if not NAME.fullmatch(word):
                break
            if word == "->":
                continue
            stem = word[:-3] if word.endswith(".py") else word[:-1]
            names.append(package if stem == "__init__" else f"{package}.{stem}")
        layers.append(names)
    return layers


def unit(module: str, package: str) -> str:
    """The drawn name a module belongs to: ``package.x`` for ``package.x`` and ``package.x.y``."""
    return ".".join(module.split(".")[:2]) if module != package else package


def upward_imports(graph: dict[str, set[str]], layers: list[list[str]], package: str) -> tuple[list[str], list[str]]:
    """(``a -> b`` for each import of a higher layer's module, problems of the drawing itself:
    modules it does not place, names placed twice or naming nothing)."""
    level: dict[str, int] = {}
    problems = []
    for i, names in enumerate(layers):
        for n in names:
            if n in level:
                problems.append(f"{n} is drawn twice")
            level[n] = i
    units = {unit(m, package) for m in graph}
    problems += [f"{u} is not in the drawing" for u in sorted(units - set(level))]
    problems += [f"{n} is drawn but is no module" for n in sorted(set(level) - units)]
    upward = []
    for a, deps in sorted(graph.items()):
        for b in sorted(deps):
            ua, ub = unit(a, package), unit(b, package)
            if ua in level and ub in level and level[ub] > level[ua] and (a, b) not in ALLOWED_UPWARD:
                upward.append(f"{a} -> {b}")
    return upward, problems


def test_layer_checker_sees_function_level_and_type_checking_imports(tmp_path):
    pkg = tmp_path / "p"
    (pkg / "top").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import low\n")
    (pkg / "low.py").write_text("def f():\n    from .top import t\n")
    (pkg / "mid.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p.top.t import x\n"
                                "from . import low\n")
    (pkg / "top" / "__init__.py").write_text("")
    (pkg / "top" / "t.py").write_text("from .. import mid, low\nimport p\n")
    (pkg / "stray.py").write_text("")
    drawing = ("Layers\n\n```\nlow.py  gone.py            the bottom: low.py words after\n"
               "  top/ (a continuation line, ignored)\nmid.py -> __init__.py     the middle\n"
               "top/                       the top\n```\n")
    layers = drawn_layers(drawing, "p")
    assert layers == [["p.low", "p.gone"], ["p.mid", "p"], ["p.top"]]
    upward, problems = upward_imports(import_graph(tmp_path, "p"), layers, "p")
    assert upward == ["p.low -> p.top.t", "p.mid -> p.top.t"]
    assert problems == ["p.stray is not in the drawing", "p.gone is drawn but is no module"]


def test_no_import_from_a_higher_layer_than_architecture_md_draws():
    layers = drawn_layers(ARCHITECTURE.read_text(encoding="utf-8"), "milnce")
    upward, problems = upward_imports(import_graph(SRC_LAYOUT, "milnce"), layers, "milnce")
    assert not problems, f"ARCHITECTURE.md's layer drawing: {problems}"
    assert not upward, f"imports from a higher layer (ARCHITECTURE.md): {upward}"


# --------------------------------------------------------------------------- package entrances
# Each package below ``milnce`` (``index/``, ``video/``, ``extract/``, ...) has one entrance: its
# ``__init__`` and the names in its ``__all__``. Code outside a package imports those names
# (``from ..video import cut_clip``), never one of its modules (``from ..video.cut import cut_clip``,
# ``import milnce.video.cut``), at the top, inside functions and under ``TYPE_CHECKING`` alike: a
# module can then be split, renamed or merged inside its package without touching the importers,
# and what a package offers the others is the list in its ``__init__``. ``commands/`` is exempt as
# a target: it is the CLI's own folder of command groups, which ``cli.py`` loads module by module.
ENTRANCE_EXEMPT = {"milnce.commands"}
KNOWN_REACH_INS: dict[str, str] = {}  # none: every reach-in found is a failure


def reach_ins(root: Path, package: str, exempt: frozenset[str] = frozenset()) -> list[str]:
    """``file:line: target`` for every import, anywhere in a module, of a module inside another
    subpackage of ``package`` (a name from it that is a module and not in its ``__all__`` too)."""
    mods = _modules(root, package)
    pkgs = {name for name, (_, is_pkg) in mods.items() if is_pkg and name != package}

    def owner(module: str) -> str | None:
        """The subpackage a (non-``__init__``) module lives in, or None for a top-level module."""
        parent = module.rpartition(".")[0]
        return parent if parent in pkgs else None

    def exported(pkg: str) -> set[str]:
        tree = ast.parse(mods[pkg][0].read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
                return set(ast.literal_eval(node.value))
        return set()

    found = []
    for name, (path, is_pkg) in sorted(mods.items()):
        here = name if is_pkg else name.rpartition(".")[0]
        home = name if is_pkg and name != package else owner(name)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name in mods]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target in pkgs:  # from PKG import NAME: NAME a module of PKG not in its __all__
                    targets = [f"{target}.{a.name}" for a in node.names
                               if f"{target}.{a.name}" in mods and a.name not in exported(target)]
                elif target in mods:
                    targets = [target]
            for target in targets:
                inside = owner(target) if target not in pkgs else None
                if inside and inside != home and inside not in exempt and not (home or "").startswith(inside + "."):
                    found.append(f"{path.relative_to(root)}:{node.lineno}: {target}")
    return found


def test_reach_in_finder_sees_every_form(tmp_path):
    pkg = tmp_path / "p"
    for sub in ("a", "b"):
        (pkg / sub).mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("from .x import X\n__all__ = ['X']\n")
    (pkg / "a" / "x.py").write_text("X = 1\n")
    (pkg / "a" / "y.py").write_text("from .x import X\nfrom . import x\n")  # inside its own package: fine
    (pkg / "b" / "__init__.py").write_text("")
    (pkg / "b" / "z.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "import p.a.x\n"
        "from ..a import X\n"  # the entrance: fine
        "from ..a import x\n"  # a module not in __all__
        "def f():\n"
        "    from ..a.x import X\n"
        "if TYPE_CHECKING:\n"
        "    from p.a.x import X\n"
    )
    (pkg / "top.py").write_text("from .a.x import X\nfrom .a import X as Y\n")
    found = sorted(reach_ins(tmp_path, "p"))
    assert found == sorted([
        "p/b/z.py:2: p.a.x", "p/b/z.py:4: p.a.x", "p/b/z.py:6: p.a.x", "p/b/z.py:8: p.a.x", "p/top.py:1: p.a.x",
    ])
    assert reach_ins(tmp_path, "p", exempt=frozenset({"p.a"})) == []


def test_each_package_is_entered_through_its_init():
    found = [f for f in reach_ins(SRC_LAYOUT, "milnce", frozenset(ENTRANCE_EXEMPT))
             if f.split(": ", 1)[1] not in KNOWN_REACH_INS]
    assert not found, ("import these names from the package (export them in its __init__ and __all__), "
                       "not from its module:\n" + "\n".join(found))
