"""``--modules-touched``: which modules of npejax the selected tests ran code in (a pytest plugin).

``python -m pytest -q -m fast --modules-touched`` runs the fast tier under a call tracer (``sys.settrace``,
only ``call`` events: one dict lookup per Python call) and lists every ``npejax/**/*.py`` with the first test
during which a function defined in it ran, in the test process itself (commands a test starts in a subprocess
do not count). The run fails (exit status 1) when a module is not touched. Importing a module does not count
(its module and class bodies are not traced, and tracing starts after collection has imported the test
files); a module that defines no function (a package's ``__init__.py`` that re-exports) counts when imported.

The modules are found on disk (``npejax``'s directory as Python imports it), so a module added to the package
is checked without a list to keep up to date. The tracer slows the run (the fast tier: 84 s against 72 s on the
2-core VM); time the tier without it.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import sys
import threading

import pytest

PACKAGE = "npejax"


def package_modules() -> dict[str, str]:
    """{file path: dotted module name} of every ``.py`` file under the package's directory."""
    (directory,) = importlib.util.find_spec(PACKAGE).submodule_search_locations
    parent = os.path.dirname(directory)
    found = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                dotted = os.path.relpath(path[:-3], parent).replace(os.sep, ".")
                found[path] = dotted.removesuffix(".__init__")
    return found


def defines_functions(path: str) -> bool:
    """Whether the file defines a function or lambda anywhere (else importing it is all it can do)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    return any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) for node in ast.walk(tree))


class ModulesTouched:
    """Records, for every package module, the first test (node id) during which one of its functions ran."""

    def __init__(self):
        self.modules = package_modules()
        self.first: dict[str, str] = {}  # file -> node id
        self.done: set[str] = set()  # files to skip from now on: outside the package, or already recorded
        self.current: str | None = None
        self.missing: list[str] = []

    def _trace(self, frame, event, arg):
        code = frame.f_code
        filename = code.co_filename
        if filename in self.done or not code.co_flags & inspect.CO_NEWLOCALS:  # module and class bodies
            return None
        if filename not in self.modules:
            self.done.add(filename)
        elif self.current is not None:
            self.first[filename] = self.current
            self.done.add(filename)
        return None  # no line events

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session):
        threading.settrace(self._trace)
        sys.settrace(self._trace)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        self.current = item.nodeid
        yield
        self.current = None

    def pytest_sessionfinish(self, session):
        sys.settrace(None)
        threading.settrace(None)
        for path, name in self.modules.items():
            if path not in self.first and not (name in sys.modules and not defines_functions(path)):
                self.missing.append(name)
        if self.missing and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter):
        tr = terminalreporter
        tr.section("npejax modules touched")
        for path, name in self.modules.items():
            where = self.first.get(path) or ("imported (defines no function)" if name not in self.missing else "")
            tr.write_line(f"{name:36s} {where or 'NOT TOUCHED'}")
        tr.write_line(f"{len(self.modules) - len(self.missing)} of {len(self.modules)} modules touched")
        if self.missing:
            tr.write_line(f"not touched by the selected tests: {', '.join(self.missing)}", red=True)
