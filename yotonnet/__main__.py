"""``python -m yotonnet ...``: the ``yotonnet`` command without its console script.

``make run`` uses it (``python -m yotonnet node``): with no other arguments a
node listens on 127.0.0.1:7117, so no config file is needed.
"""

from .cli import main

if __name__ == "__main__":
    main()
