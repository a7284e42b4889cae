"""``python -m yotonnet.cli ARGS``: the ``yotonnet`` command without its console script."""

from __future__ import annotations

from . import main

if __name__ == "__main__":
    main()
