"""The package's layering, checked on its source with ``ast`` so it cannot regress (issue 25, architecture.md):

(a) no import cycle among wilson_ray's modules, imports inside functions counted (those under
    ``if TYPE_CHECKING:`` are not: they never run) and so are ``importlib.import_module`` calls on a string or an
    f-string (``f"wilson_ray.commands.{name}"`` may load any module of that package);
(b) no module, and no test, imports another module's private name (``from m import _x`` or ``m._x``), nor a name
    from a module that only imports it (an old re-export) instead of from where it is defined;
(c) the core (everything but ``orchestration/``, ``tracking/``, ``cli.py``, ``commands/``) never imports ray,
    mlflow or optuna, at any level.

The checkers take ``{module name: source}`` so the tests at the bottom can plant violations in small synthetic
packages and see them found.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "wilson_ray"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE
TESTS = ROOT.parent / "tests"
# Outside the core: the only places that may import the distributed / tracking / search stack.
NOT_CORE = ("orchestration", "tracking", "cli", "commands")
BANNED_IN_CORE = ("ray", "mlflow", "optuna")


def package_sources(root: Path = ROOT, package: str = PACKAGE) -> dict[str, str]:
    """``{dotted module name: source}`` of every ``.py`` file under ``root`` (a package's ``__init__`` is the
    package's name)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path.read_text(encoding="utf-8")
    return out


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING`` exactly: ``not TYPE_CHECKING`` (a block that does run) or
    ``TYPE_CHECKING or x`` are not."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks (imports for annotations only; an ``else:`` runs)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def _imports(module: str, is_package: bool, tree: ast.AST, skip: set[int]):
    """(line, imported module path, imported names or None) of every import statement not in ``skip``; relative
    imports are resolved against ``module``."""
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            yield node.lineno, base, [a.name for a in node.names]


def _dynamic_imports(module: str, tree: ast.AST, skip: set[int]):
    """(line, name) of every ``import_module(...)`` call not in ``skip`` whose argument is a string or an f-string;
    an f-string gives its constant head (``__name__`` read as ``module``) followed by ``*`` where a value is
    computed at run time (``f"pkg.{name}"`` -> ``pkg.*``). Other arguments cannot be read and are not edges."""
    for node in ast.walk(tree):
        if id(node) in skip or not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if called != "import_module":
            continue
        arg = node.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            yield node.lineno, arg.value
        elif isinstance(arg, ast.JoinedStr):
            head = ""
            for part in arg.values:
                if isinstance(part, ast.Constant):
                    head += str(part.value)
                elif isinstance(part.value, ast.Name) and part.value.id == "__name__" and part.format_spec is None:
                    head += module
                else:
                    head += "*"
                    break
            yield node.lineno, head


def _dynamic_targets(name: str, sources) -> list[str]:
    """The modules of ``sources`` a dynamic import of ``name`` may load: the module itself, or for ``pkg.*``
    every module under that head (none when the head names no module of ``sources``: not this package's)."""
    if "*" not in name:
        return [name] if name in sources else []
    head = name.split("*", 1)[0]
    if not head or _owner(head.rstrip("."), sources) is None:
        return []
    return [m for m in sources if m.startswith(head)]


def _owner(name: str, modules) -> str | None:
    """The longest prefix of dotted ``name`` that is one of ``modules``."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _parse(sources: dict[str, str]) -> dict[str, tuple[ast.AST, bool]]:
    return {m: (ast.parse(src), _is_package(m, sources)) for m, src in sources.items()}


def _is_package(module: str, sources: dict[str, str]) -> bool:
    return any(other.startswith(module + ".") for other in sources)


def import_graph(sources: dict[str, str]) -> dict[str, dict[str, int]]:
    """``{module: {imported module: first line}}`` over the modules of ``sources``; ``from pkg import name``
    points at ``pkg.name`` when that is a module, else at ``pkg``; ``importlib.import_module(f"pkg.{x}")`` points
    at every module under ``pkg`` (the command-line's sub-commands). A package that discovers its modules
    (``pkgutil.iter_modules``, the method registry) points at each of them (line 0)."""
    graph: dict[str, dict[str, int]] = {m: {} for m in sources}
    for module, (tree, is_package) in _parse(sources).items():
        skip = _type_checking_nodes(tree)
        for line, base, names in _imports(module, is_package, tree, skip):
            targets = [base] if names is None else [f"{base}.{n}" if f"{base}.{n}" in sources else base for n in names]
            for target in targets:
                owner = _owner(target, sources)
                if owner is not None and owner != module:
                    graph[module].setdefault(owner, line)
        for line, name in _dynamic_imports(module, tree, skip):
            for target in _dynamic_targets(name, sources):
                if target != module:
                    graph[module].setdefault(target, line)
        if is_package and "pkgutil.iter_modules" in sources[module]:  # a registry that imports its modules itself
            for sub in sources:
                if sub.rpartition(".")[0] == module:
                    graph[module].setdefault(sub, 0)
    return graph


def import_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph[nxt])))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def describe_cycle(component: list[str], graph: dict[str, dict[str, int]]) -> str:
    """One closed path through ``component`` with the line of each import, e.g. ``a -> b (a:3) -> a (b:7)``."""
    members = set(component)
    path, seen = [component[0]], {component[0]: 0}
    while True:
        node = path[-1]
        nxt = min(t for t in graph[node] if t in members)
        # Prefer an edge that closes the loop as soon as possible.
        back = [t for t in graph[node] if t in seen]
        nxt = back[0] if back else nxt
        path.append(nxt)
        if nxt in seen:
            path = path[seen[nxt] :]
            break
        seen[nxt] = len(path) - 1
    hops = [f"{b} ({a}:{graph[a][b]})" for a, b in zip(path, path[1:])]
    return f"{len(component)} modules {component}: {path[0]} -> " + " -> ".join(hops)


def private_imports(sources: dict[str, str], importers: dict[str, str] | None = None) -> list[str]:
    """``module:line name`` for every import of a private name of a module of ``sources`` by another module of
    ``importers`` (``sources`` itself when None; the tests, too): ``from m import _x`` and, for a module bound by an
    import, ``m._x`` (dunder names are not private)."""
    found = []
    private = lambda name: name.startswith("_") and not name.startswith("__")  # noqa: E731
    for module, (tree, is_package) in _parse(sources if importers is None else importers).items():
        bound: dict[str, str] = {}  # local name -> the package module it refers to
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                (_, base, names), *_ = _imports(module, is_package, ast.Module([node], []), set())
                if _owner(base, sources) is None:
                    continue
                for alias in node.names:
                    if f"{base}.{alias.name}" in sources:
                        bound[alias.asname or alias.name] = f"{base}.{alias.name}"
                    elif private(alias.name) and base != module:
                        found.append(f"{module}:{node.lineno} {base}.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname and alias.name in sources:
                        bound[alias.asname] = alias.name
                    elif any(private(part) for part in alias.name.split(".")) and alias.name.startswith(PACKAGE):
                        found.append(f"{module}:{node.lineno} {alias.name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and private(node.attr):
                target = bound.get(node.value.id) if isinstance(node.value, ast.Name) else None
                if target is None and isinstance(node.value, (ast.Attribute, ast.Name)):
                    dotted = ast.unparse(node.value)
                    target = dotted if dotted in sources else None
                if target is not None and target != module:
                    found.append(f"{module}:{node.lineno} {target}.{node.attr}")
    return sorted(set(found))


def _top_level_names(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(names a module defines, names it only binds by an import) at its top level, ``if``/``try`` blocks included;
    a name in ``__all__`` counts as defined (a deliberate part of the module's interface)."""
    defined: set[str] = set()
    imported: set[str] = set()
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets) and node.value is not None:
                defined.update(n.value for n in ast.walk(node.value) if isinstance(n, ast.Constant))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            imported.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
            todo += [*node.body, *node.orelse, *getattr(node, "finalbody", [])]
            todo += [stmt for handler in getattr(node, "handlers", []) for stmt in handler.body]
    return defined, imported - defined


def reexport_imports(sources: dict[str, str], importers: dict[str, str] | None = None) -> list[str]:
    """``module:line m.name`` for every ``from m import name`` (``m`` a module of ``sources``, by a module of
    ``importers``, ``sources`` itself when None) where ``m`` does not define ``name`` but only imports it: the name
    is imported from where it is defined, so a module's imports are its own business."""
    tops = {m: _top_level_names(tree) for m, (tree, _) in _parse(sources).items()}
    found = []
    for module, (tree, is_package) in _parse(sources if importers is None else importers).items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            (_, base, names), *_ = _imports(module, is_package, ast.Module([node], []), set())
            if base not in tops or base == module:
                continue
            defined, imported = tops[base]
            for name in names:
                if f"{base}.{name}" not in sources and name in imported and name not in defined:
                    found.append(f"{module}:{node.lineno} {base}.{name}")
    return sorted(set(found))


def is_core(module: str, package: str = PACKAGE) -> bool:
    """Whether ``module`` belongs to the core (not the orchestration/tracking layers or the command line)."""
    parts = module.split(".")
    return not (len(parts) > 1 and parts[0] == package and parts[1] in NOT_CORE)


def banned_core_imports(sources: dict[str, str], banned=BANNED_IN_CORE) -> list[str]:
    """``module:line name`` for every import of ``banned`` (or a submodule of it) in a core module, at any level
    (inside functions and TYPE_CHECKING blocks too)."""
    found = []
    for module, (tree, is_package) in _parse(sources).items():
        if not is_core(module):
            continue
        for line, base, _ in _imports(module, is_package, tree, set()):
            if base.split(".")[0] in banned:
                found.append(f"{module}:{line} {base}")
    return found


# ---------------------------------------------------------------------------------------------------------------
# The package


SOURCES = package_sources()
TEST_SOURCES = package_sources(TESTS, "tests")


def test_the_walk_sees_the_whole_package():
    graph = import_graph(SOURCES)
    assert len(SOURCES) > 80 and "wilson_ray.engine" in SOURCES and "wilson_ray.methods" in SOURCES
    # Function-level imports are edges: cache trains a missing step through the engine inside cached_step.
    assert "wilson_ray.engine" in graph["wilson_ray.cache"]
    assert "wilson_ray.step_setup" in graph["wilson_ray.engine"]
    # importlib.import_module(f"wilson_ray.commands.{name}"): the command line loads each sub-command module.
    assert {"wilson_ray.commands.train", "wilson_ray.commands.sweep"} <= set(graph["wilson_ray.cli"])
    assert len(TEST_SOURCES) > 50 and "tests.core.test_layering" in TEST_SOURCES


def test_no_import_cycle():
    graph = import_graph(SOURCES)
    cycles = import_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(describe_cycle(c, graph) for c in cycles)


def test_no_module_imports_another_modules_private_name():
    found = private_imports(SOURCES)
    assert not found, "private names imported across modules:\n" + "\n".join(found)


def test_no_test_imports_a_private_name_of_the_package():
    found = private_imports(SOURCES, TEST_SOURCES)
    assert not found, "tests importing the package's private names (make them public, or test them through a " + (
        "public function):\n" + "\n".join(found)
    )


def test_names_are_imported_from_where_they_are_defined():
    found = reexport_imports(SOURCES, {**SOURCES, **TEST_SOURCES})
    assert not found, "names imported from a module that only imports them:\n" + "\n".join(found)


def test_the_core_never_imports_ray_mlflow_or_optuna():
    found = banned_core_imports(SOURCES)
    assert not found, "the core imports the distributed/tracking stack:\n" + "\n".join(found)
    # The walk does see these imports where they are allowed (so it would see one in the core).
    allowed = {
        base.split(".")[0]
        for module, source in SOURCES.items()
        if not is_core(module)
        for _, base, _ in _imports(module, _is_package(module, SOURCES), ast.parse(source), set())
    }
    assert set(BANNED_IN_CORE) <= allowed


# ---------------------------------------------------------------------------------------------------------------
# The checkers find planted violations


def _pkg(**files: str) -> dict[str, str]:
    """A synthetic package ``p``: keyword ``a__b`` is module ``p.a.b``."""
    return {"p" + ("." + name.replace("__", ".") if name != "init" else ""): src for name, src in files.items()}


def test_a_planted_cycle_through_a_function_level_import_is_found_with_its_path():
    sources = _pkg(
        init="",
        a="from p import b\n",
        b="import os\n\ndef f():\n    from p.c import g\n    return g\n",
        c="from p.a import x\n",
        d="from p import a\n",
    )
    graph = import_graph(sources)
    assert graph["p.b"] == {"p.c": 4}
    cycles = import_cycles(graph)
    assert cycles == [["p.a", "p.b", "p.c"]]
    assert (
        describe_cycle(cycles[0], graph)
        == "3 modules ['p.a', 'p.b', 'p.c']: p.a -> p.b (p.a:1) -> p.c (p.b:4) -> p.a (p.c:1)"
    )


def test_a_discovering_package_points_at_its_modules():
    sources = _pkg(
        init="",
        reg="import importlib, pkgutil\nfor m in pkgutil.iter_modules(__path__):\n    importlib.import_module(m)\n",
        reg__one="def f():\n    from p import user\n",
        user="from p.reg import x\n",
    )
    graph = import_graph(sources)
    assert graph["p.reg"] == {"p.reg.one": 0}
    assert import_cycles(graph) == [["p.reg", "p.reg.one", "p.user"]]


def test_type_checking_imports_and_relative_imports():
    sources = _pkg(
        init="",
        a="from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p.b import B\n",
        b="from . import a\nfrom .sub.c import k\n",
        sub="",
        sub__c="from .. import b\n",
    )
    graph = import_graph(sources)
    assert graph["p.a"] == {}  # annotations only: no edge, no cycle through a
    assert graph["p.b"] == {"p.a": 1, "p.sub.c": 2}
    assert import_cycles(graph) == [["p.b", "p.sub.c"]]
    sources["p.sub.c"] = "def f():\n    pass\n"
    assert import_cycles(import_graph(sources)) == []


def test_only_an_exact_type_checking_block_is_skipped():
    sources = _pkg(
        init="",
        a="import typing\nif typing.TYPE_CHECKING:\n    from p.b import B\n",
        b="from typing import TYPE_CHECKING\nif not TYPE_CHECKING:\n    from p.a import A\n"
        "else:\n    from p.c import C\n",
        c="from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    pass\nelse:\n    from p.a import A\n",
    )
    graph = import_graph(sources)
    assert graph["p.a"] == {}  # annotations only
    assert graph["p.b"] == {"p.a": 3, "p.c": 5}  # `not TYPE_CHECKING` runs (its else does not, but is counted)
    assert graph["p.c"] == {"p.a": 5}  # the else of `if TYPE_CHECKING:` runs


def test_import_module_on_a_string_or_f_string_is_an_edge():
    sources = _pkg(
        init="",
        cli="import importlib\n\ndef build(name):\n    return importlib.import_module(f'p.cmds.{name}')\n",
        cmds="",
        cmds__run="from p.cli import build\n",
        cmds__other="",
        one="from importlib import import_module\nx = import_module('p.cli')\ny = import_module(f'os.{1}')\n",
        reg="import importlib\n\ndef load(n):\n    return importlib.import_module(f'{__name__}.{n}')\n",
        reg__item="",
    )
    graph = import_graph(sources)
    assert graph["p.cli"] == {"p.cmds.run": 4, "p.cmds.other": 4}
    assert graph["p.one"] == {"p.cli": 2}  # a string names its module; another package's f-string: no edge
    assert graph["p.reg"] == {"p.reg.item": 4}
    assert import_cycles(graph) == [["p.cli", "p.cmds.run"]]


def test_planted_private_imports_by_tests_and_re_exports_are_found():
    sources = _pkg(
        init="",
        a="def _helper():\n    pass\n\ndef public():\n    return _helper()\n",
        b="from p.a import public\nfrom p import a as mod\n\n__all__ = ['mod']\n",
        c="try:\n    from p.a import public\nexcept ImportError:\n    public = None\n",
    )
    tests = {
        "tests.test_a": "from p.a import _helper\nfrom p import a\n\ndef test():\n    a._helper()\n",
        "tests.test_b": "from p.b import public, mod\nfrom p.c import public as p2\nfrom p.a import public as p3\n",
    }
    assert private_imports(sources, tests) == ["tests.test_a:1 p.a._helper", "tests.test_a:5 p.a._helper"]
    assert private_imports(sources) == []
    # b only imports `public` (c defines it too, in its except); `mod` is in b's __all__: meant to be b's
    assert reexport_imports(sources, tests) == ["tests.test_b:1 p.b.public"]


def test_planted_private_imports_are_found():
    sources = _pkg(
        init="",
        a="def _helper():\n    pass\n\ndef public():\n    return _helper()\n",
        b="from p.a import _helper, public\n",
        c="from p import a\n\ndef f():\n    return a._helper() + a.public()\n",
        d="import p.a as mod\nx = mod._helper\ny = mod.__name__\n",
        e="from os import _exit\nfrom p.a import public\n",
    )
    assert private_imports(sources) == ["p.b:1 p.a._helper", "p.c:4 p.a._helper", "p.d:2 p.a._helper"]


def test_planted_ray_import_in_the_core_is_found_at_any_level():
    sources = {
        "wilson_ray": "",
        "wilson_ray.engine": "import torch\n\ndef f():\n    import ray.train\n",
        "wilson_ray.losses": "import typing\nif typing.TYPE_CHECKING:\n    from mlflow import MlflowClient\n",
        "wilson_ray.rayish": "import raylib\n",
        "wilson_ray.orchestration": "",
        "wilson_ray.orchestration.trial": "from ray import tune\nimport optuna\n",
        "wilson_ray.tracking.mlflow_tracker": "import mlflow\n",
        "wilson_ray.cli": "import optuna\n",
    }
    assert banned_core_imports(sources) == ["wilson_ray.engine:4 ray.train", "wilson_ray.losses:3 mlflow"]
    assert is_core("wilson_ray.weak.pipeline") and not is_core("wilson_ray.commands.sweep")
