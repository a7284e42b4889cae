"""The ``yotonnet`` command: run a node, or join the mesh briefly to use it.

``yotonnet node`` runs a node in the foreground (the same node, options and
TOML file as ``twistd yotonnet``). Every other subcommand (``pub``, ``sub``,
``call``, ``state``, ``status``, ``bench``) is a client: it starts a
short-lived :class:`~yotonnet.Context`, links it to one node (``--connect``,
default the local node on 127.0.0.1:7117), waits until the mesh's records
have arrived, does its work and leaves.

Waiting for the records matters: a message published before the client knows
of any subscriber reaches nobody, and a call before it knows of a replier
fails with NoResponders. The client waits until the node's record lists the
link to it (the node sends every record it holds before that one), then makes
one round trip to the node's control channel (see
:class:`yotonnet.service.NodeControl`): frames on one link arrive in order,
so after that reply the node has seen everything the client sent, and the
client has what the node had for it.

Exit status: 0 success, 1 a runtime failure (unreachable node, no replier,
timeout, remote error), 2 a usage error (bad flag, bad JSON, bad config
file). Progress goes to stderr only when stderr is a terminal.

The package, module by module:

* :mod:`.parser` builds the argument parser (subcommands, option groups);
  :mod:`.checks` checks the arguments before any network activity and resolves
  the settings (:func:`parse`); :mod:`.run` has :func:`main`, which runs the
  node or a client subcommand; :mod:`.__main__` makes ``python -m yotonnet.cli``.
* One module per subcommand: :mod:`.node`, :mod:`.pubsub` (``pub``, ``sub``),
  :mod:`.calls` (``call``), :mod:`.state`, :mod:`.status` (its text form in
  :mod:`.status_text`), :mod:`.bench`. The kernel, console, certs and passwd
  subcommands live in :mod:`yotonnet.kernel.cli` and :mod:`yotonnet.cli.security`.
* What the client subcommands share: :mod:`.session` (joining the mesh through
  one node, bounded waits), :mod:`.output` (JSON, message lines, progress,
  notes on stderr), :mod:`.client_logs` (their log lines on stderr) and
  :mod:`.exits` (exit statuses, :class:`CliError`).

This module re-exports the names other code imports from ``yotonnet.cli``.
"""

from __future__ import annotations

from .bench import cmd_bench
from .calls import cmd_call
from .checks import parse
from .client_logs import _begin_client_logging
from .exits import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CliError
from .output import Progress, dumps, to_json
from .parser import EPILOG, TYPES, add_security_options, build_parser
from .pubsub import cmd_pub, cmd_sub
from .run import COMMANDS, main
from .session import Session
from .state import cmd_state
from .status import cmd_status
from .status_text import format_status

__all__ = [
    "COMMANDS",
    "EPILOG",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "TYPES",
    "CliError",
    "Progress",
    "Session",
    "_begin_client_logging",
    "add_security_options",
    "build_parser",
    "cmd_bench",
    "cmd_call",
    "cmd_pub",
    "cmd_state",
    "cmd_status",
    "cmd_sub",
    "dumps",
    "format_status",
    "main",
    "parse",
    "to_json",
]
