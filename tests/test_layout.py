"""The package layout: imports run one way between subpackages, no cycles, no hidden imports, one writer.

Read from the source with ``ast`` (nothing is imported), so a violation names the file and line.
"""

import ast
import os
import re

import pytest

pytestmark = pytest.mark.fast  # the whole file is in the fast tier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "npejax")

BASE = {"schema", "io", "catalogs", "configuration"}  # shared by every part
# subpackage -> the npejax parts it may import (besides the base): simulation <- datasets <- network <-
# cataloging and evaluation; surveys build on simulation, and cataloging reads survey frames
# (cataloging.images.open_sdss_frame). The command-line convention (cli: usage errors naming a flag) is for the
# commands and the one layer that parses their values, cataloging; the network below never raises a usage error.
ALLOWED = {
    "sim": {"sim"},
    "surveys": {"sim", "surveys"},
    "datasets": {"sim", "datasets"},
    "nn": {"sim", "datasets", "nn"},
    "cataloging": {"sim", "surveys", "datasets", "nn", "cataloging", "cli"},
    "evaluation": {"sim", "datasets", "nn", "evaluation"},
}
# cli prints the package's version (--version): npejax.__version__, a string set by npejax/__init__.py; it lets
# a --config file import its siblings from any directory (configuration.add_config_root)
BASE_ALLOWED = {
    "schema": set(),
    "io": set(),
    "cli": {"__version__", "configuration"},
    "catalogs": {"io", "schema"},
    "configuration": {"schema"},
}
# The only places that may rename a temporary file into place: npejax.io (every file) and the two
# mechanisms that are not "write one file": a dataset shard directory rendered in a temporary directory,
# and a download resumed from its ``.part`` file.
RENAMERS = {"npejax/io.py", "npejax/datasets/writer.py", "npejax/surveys/download.py"}


def _modules():
    for dirpath, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, ROOT)
                parts = os.path.relpath(path, PACKAGE)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                yield rel, ["npejax", *parts], path


def _imports(tree, module_parts, is_package):
    """(line, imported module as a dotted name, top-level?) for every npejax import in the tree."""
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = module_parts if is_package else module_parts[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from npejax.nn import predictor` names the module npejax.nn.predictor (the keys of ALLOWED are the
            # subpackages)
            packages = ("npejax", *(f"npejax.{part}" for part in ALLOWED))
            names = [f"{mod}.{a.name}" for a in node.names] if mod in packages else [mod]
        else:
            continue
        for name in names:
            if name == "npejax" or name.startswith("npejax."):
                yield node.lineno, name, id(node) in top


def _part(dotted: str) -> str:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else ""


MODULES = list(_modules())


def test_layout_found_the_subpackages():
    parts = {_part(".".join(p)) for _, p, _ in MODULES}
    assert set(ALLOWED) | set(BASE_ALLOWED) <= parts


@pytest.mark.parametrize("rel,parts,path", MODULES, ids=[m[0] for m in MODULES])
def test_imports_run_one_way(rel, parts, path):
    part = parts[1] if len(parts) > 1 else ""
    with open(path) as f:
        tree = ast.parse(f.read(), rel)
    if part in ALLOWED:
        allowed = ALLOWED[part] | BASE
    elif part in BASE_ALLOWED:
        allowed = BASE_ALLOWED[part]
    else:  # a command module (npejax/main.py, ...) or the package itself: may import anything
        return
    bad = [
        (line, name)
        for line, name, _ in _imports(tree, parts, path.endswith("__init__.py"))
        if _part(name) not in allowed
    ]
    assert not bad, f"{rel} imports against the layer order (it may import {sorted(allowed)}): {bad}"


@pytest.mark.parametrize("rel,parts,path", MODULES, ids=[m[0] for m in MODULES])
def test_no_hidden_imports(rel, parts, path):
    """Imports sit at the top of a module; a deferred one says why on its line (``# deferred: ...``)."""
    with open(path) as f:
        source = f.read()
    lines = source.splitlines()
    tree = ast.parse(source, rel)
    top = {id(node) for node in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` / try-import blocks at module level count as top level
        if isinstance(node, (ast.If, ast.Try)):
            top |= {id(n) for n in ast.walk(node)}
    hidden = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        and id(node) not in top
        and "# deferred:" not in lines[node.lineno - 1]
    ]
    assert not hidden, f"{rel}: function-local imports without a '# deferred: why' comment at lines {hidden}"


def test_no_import_cycles():
    graph = {}
    for rel, parts, path in MODULES:
        with open(path) as f:
            tree = ast.parse(f.read(), rel)
        name = ".".join(parts)
        targets = set()
        for _, imported, _ in _imports(tree, parts, path.endswith("__init__.py")):
            # `from npejax.sim import prior` names the module npejax.sim.prior when that is a module
            targets.add(imported if any(".".join(p) == imported for _, p, _ in MODULES) else imported.rsplit(".", 1)[0])
        graph[name] = targets - {name}
    state, stack = {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt in graph and not state.get(nxt):
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if not state.get(node):
            visit(node)


def test_one_atomic_writer():
    """Files are renamed into place only by npejax.io (and the two directory/resume mechanisms)."""
    offenders = []
    for rel, _, path in MODULES:
        with open(path) as f:
            for number, line in enumerate(f, start=1):
                code = line.split("#", 1)[0]
                if re.search(r"\bos\.(replace|rename)\(|tempfile\.mk(s|d)temp\(", code) and rel not in RENAMERS:
                    offenders.append(f"{rel}:{number}: {line.strip()}")
    assert not offenders, "write files with npejax.io.atomic_write/atomic_path instead:\n" + "\n".join(offenders)
