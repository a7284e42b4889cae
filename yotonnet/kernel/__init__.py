"""Shared remote kernels: one interpreter that several people use through the mesh.

* :class:`KernelBroker` (``yotonnet kernel NAME``) joins the mesh and supervises
  the kernel process; :class:`KernelClient` (Twisted) and
  :class:`BlockingKernelClient` attach to it from anywhere on the mesh;
  ``yotonnet console NAME`` is the interactive terminal client.
* :mod:`.backend` is what kind of kernel a broker runs: :class:`PythonBackend`
  (yotonnet's own Python kernel, :mod:`.driver` run over pipes) or
  :class:`yotonnet.kernel.jupyter.JupyterBackend` (any Jupyter kernel, through
  jupyter_client: ``yotonnet kernel NAME --jupyter SPEC``; imported on demand,
  it needs the ``jupyter`` extra).
* :mod:`.frontend` is the kernel process of the Jupyter kernelspec
  ``yotonnet-NAME`` (``yotonnet jupyter install NAME``): any Jupyter frontend
  uses shared kernel NAME through it.
* :mod:`.protocol` holds the channel names, status values, output kinds and
  the history/merge logic; :mod:`.roles` the pluggable role check.
"""

from .backend import KernelBackend, PythonBackend
from .broker import BrokerConfig, KernelBroker, KernelGone
from .client import ExecuteResult, KernelClient, KernelExecutionError
from .roles import COLLABORATOR, OWNER, VIEWER, Caller, default_roles, table_roles

__all__ = [
    "KernelBroker",
    "BrokerConfig",
    "KernelBackend",
    "PythonBackend",
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
