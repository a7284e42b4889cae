"""Exit statuses of the ``yotonnet`` command, and CliError, which ends a subcommand with one.

0 success, 1 a runtime failure, 2 a usage error (see :mod:`yotonnet.cli`).
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """Ends a subcommand with a message on stderr and an exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
