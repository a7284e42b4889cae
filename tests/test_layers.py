"""Ring 1: the layers stay as the architecture says (README, "Architecture").

* nothing in :mod:`yotonnet.core` imports Twisted, directly or through another
  yotonnet module: the sans-IO core is tested without a reactor and can be
  driven by anything;
* no module uses an underscore name another module of yotonnet defines, and
  none replaces another object's methods at run time: parts talk through
  their public names and the interfaces in ``core/interfaces.py`` and
  ``mesh/interfaces.py``. The one module allowed to read Twisted's private
  buffer fields and re-point a forwarder's ``dataReceived`` is
  ``mesh/writer.py``, which says why;
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


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def package_trees() -> dict[str, ast.Module]:
    trees = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    trees[os.path.relpath(path, PACKAGE)] = ast.parse(f.read(), path)
    return trees


def private_definitions(trees: dict[str, ast.Module]) -> dict[str, set[str]]:
    """Underscore name -> the modules that define it (a def, a class, an assignment)."""
    owners: dict[str, set[str]] = {}
    for module, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = node.name
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                name = node.attr
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                name = node.id
            else:
                continue
            if _private(name):
                owners.setdefault(name, set()).add(module)
    return owners


#: (module, attribute) pairs allowed to reach into something not their own, and why
FOREIGN_PRIVATE_ALLOWED = {
    # the eager write path reads Twisted's TCP buffer fields (see the writer's docstring)
    ("mesh/writer.py", "_tempDataLen"),
    ("mesh/writer.py", "_aborting"),
    # os._exit is the documented way for a forked child to end
    ("kernel/driver.py", "_exit"),
}
#: (module, replaced attribute) allowed, and why
REPLACEMENTS_ALLOWED = {
    # a forwarder that only forwards is skipped on every read (see the writer's docstring)
    ("mesh/writer.py", "dataReceived"),
    # in the kernel's own interpreter, user code's input() and getpass() ask the
    # frontend (as ipykernel does): the user's program, not another part of yotonnet
    ("kernel/driver.py", "input"),
    ("kernel/driver.py", "getpass"),
    # ... and its display(), update_display() and clear_output() are builtins there, as
    # IPython's display() is in an ipykernel (new names, replacing nothing)
    ("kernel/driver.py", "display"),
    ("kernel/driver.py", "update_display"),
    ("kernel/driver.py", "clear_output"),
}


class NoPrivateReach(SynchronousTestCase):
    def test_no_module_uses_another_modules_underscore_names(self):
        trees = package_trees()
        owners = private_definitions(trees)
        reach = []
        for module, tree in trees.items():
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Attribute) and _private(node.attr)):
                    continue
                if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                    continue  # a class's own names, inherited ones included
                if module in owners.get(node.attr, ()):
                    continue
                if (module, node.attr) in FOREIGN_PRIVATE_ALLOWED:
                    continue
                reach.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
        self.assertEqual(reach, [])

    def test_no_module_replaces_another_objects_methods(self):
        trees = package_trees()
        functions = {
            node.name for tree in trees.values() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        } | {"dataReceived", "connectionLost", "connectionMade", "write", "send"}
        patches = []
        for module, tree in trees.items():
            for node in ast.walk(tree):
                if not isinstance(node, ast.Assign):
                    continue
                value = node.value
                is_callable = isinstance(value, ast.Lambda) or (
                    isinstance(value, ast.Attribute) and value.attr in functions
                )
                for target in node.targets:
                    if (
                        is_callable
                        and isinstance(target, ast.Attribute)
                        and not (isinstance(target.value, ast.Name)
                                 and target.value.id in ("self", "cls"))
                        and (module, target.attr) not in REPLACEMENTS_ALLOWED
                    ):
                        patches.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
        self.assertEqual(patches, [])


class OldPaths(SynchronousTestCase):
    def test_old_import_paths_give_the_moved_modules(self):
        from yotonnet.moved import MOVED

        for old, new in MOVED.items():
            self.assertIs(importlib.import_module(old), importlib.import_module(new), old)
        from yotonnet.context import Context  # the way the README used to spell it

        self.assertIs(Context, yotonnet.Context)
