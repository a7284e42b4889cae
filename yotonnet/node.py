"""``python -m yotonnet.node``: run one mesh node in the foreground.

The same as ``yotonnet node`` (see :mod:`yotonnet.cli`), kept for ``make run``
and for environments without the console script. With no arguments it listens
on 127.0.0.1:7117, so ``make run`` needs no config file.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from .cli import main as cli_main


def main(argv: list[str] | None = None) -> NoReturn:
    cli_main(["node", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
