"""Old import paths of modules that moved into the layered tree keep working.

``yotonnet.core.wire``, ``yotonnet.mesh.context``, ``yotonnet.security.guard`` and the others
now live in :mod:`yotonnet.core`, :mod:`yotonnet.mesh`,
:mod:`yotonnet.security` and :mod:`yotonnet.service` (see the README's
architecture section). Importing an old path gives the very module at the new
one (the same object, so names and patches agree), through a small meta-path
finder installed when :mod:`yotonnet` is imported. New code imports the new
paths.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType
from typing import Any

#: old module path -> new module path
MOVED = {
    "yotonnet.wire": "yotonnet.core.wire",
    "yotonnet.codec": "yotonnet.core.codec",
    "yotonnet.messages": "yotonnet.core.messages",
    "yotonnet.names": "yotonnet.core.names",
    "yotonnet.routing": "yotonnet.core.routing",
    "yotonnet.flow": "yotonnet.core.flow",
    "yotonnet.calls": "yotonnet.core.calls",
    "yotonnet.costs": "yotonnet.core.costs",
    "yotonnet.context": "yotonnet.mesh.context",
    "yotonnet.link": "yotonnet.mesh.link",
    "yotonnet.auth": "yotonnet.security.auth",
    "yotonnet.guard": "yotonnet.security.guard",
    "yotonnet.tls": "yotonnet.security.tls",
    "yotonnet.certs": "yotonnet.security.certs",
    "yotonnet.authz": "yotonnet.security.authz",
    "yotonnet.security_cli": "yotonnet.cli.security",
    "yotonnet.tap": "yotonnet.service.tap",
    "yotonnet.config": "yotonnet.service.config",
    "yotonnet.status": "yotonnet.service.status",
    "yotonnet.web": "yotonnet.service.web",
    "yotonnet.logs": "yotonnet.service.logs",
}


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path and loads it as the module at its new one."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> ModuleType:
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        pass  # already executed under its new name


def install() -> None:
    if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(MovedModules())
