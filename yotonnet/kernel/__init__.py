"""Shared remote kernels: one Python interpreter that several people use through the mesh.

* :class:`KernelBroker` (``yotonnet kernel NAME``) joins the mesh and supervises
  the kernel process; :class:`KernelClient` (Twisted) and
  :class:`BlockingKernelClient` attach to it from anywhere on the mesh;
  ``yotonnet console NAME`` is the interactive terminal client.
* :mod:`.protocol` holds the channel names, status values, output kinds and
  the history/merge logic; :mod:`.roles` the pluggable role check;
  :mod:`.driver` the program that runs inside the kernel process.
"""

from .broker import BrokerConfig, KernelBroker, KernelGone
from .client import ExecuteResult, KernelClient, KernelExecutionError
from .roles import COLLABORATOR, OWNER, VIEWER, Caller, default_roles, table_roles

__all__ = [
    "KernelBroker",
    "BrokerConfig",
    "KernelGone",
    "KernelClient",
    "BlockingKernelClient",
    "ExecuteResult",
    "KernelExecutionError",
    "Caller",
    "OWNER",
    "COLLABORATOR",
    "VIEWER",
    "default_roles",
    "table_roles",
]


def __getattr__(name: str):  # the blocking client starts a reactor thread: import it lazily
    if name == "BlockingKernelClient":
        from .blocking import BlockingKernelClient

        return BlockingKernelClient
    raise AttributeError(name)
