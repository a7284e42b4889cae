"""Ring 1: the layers stay as the architecture says (README, "Architecture").

* nothing in :mod:`yotonnet.core` imports Twisted, directly or through another
  yotonnet module: the sans-IO core is tested without a reactor and can be
  driven by anything;
* old import paths of moved modules give the very module at the new path.
"""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

import yotonnet

PACKAGE = os.path.dirname(os.path.abspath(yotonnet.__file__))
CORE = os.path.join(PACKAGE, "core")


def imported_modules(path: str) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].split(os.sep)
    package = rel[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


class CoreIsSansIO(SynchronousTestCase):
    def test_no_core_module_imports_twisted(self):
        for name in sorted(os.listdir(CORE)):
            if not name.endswith(".py"):
                continue
            imports = imported_modules(os.path.join(CORE, name))
            twisted = sorted(m for m in imports if m == "twisted" or m.startswith("twisted."))
            self.assertEqual(twisted, [], f"yotonnet/core/{name} imports {twisted}")
            outside = sorted(
                m for m in imports
                if m.startswith("yotonnet.") and not m.startswith("yotonnet.core")
                and not m.startswith("yotonnet.errors")  # the exceptions every layer shares
            )
            self.assertEqual(outside, [], f"yotonnet/core/{name} reaches out of the core")

    def test_importing_the_core_loads_no_twisted(self):
        # In a fresh interpreter: the core and everything it imports, without Twisted.
        modules = [f"yotonnet.core.{n[:-3]}" for n in os.listdir(CORE)
                   if n.endswith(".py") and n != "__init__.py"]
        code = (
            "import importlib, sys\n"
            "sys.modules['yotonnet'] = type(sys)('yotonnet')\n"  # skip the package's facade
            f"sys.modules['yotonnet'].__path__ = [{PACKAGE!r}]\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m.startswith('twisted')))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout
        self.assertEqual(out.strip(), "[]")


class OldPaths(SynchronousTestCase):
    def test_old_import_paths_give_the_moved_modules(self):
        from yotonnet.moved import MOVED

        for old, new in MOVED.items():
            self.assertIs(importlib.import_module(old), importlib.import_module(new), old)
        from yotonnet.context import Context  # the way the README used to spell it

        self.assertIs(Context, yotonnet.Context)
