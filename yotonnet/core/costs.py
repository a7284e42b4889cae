"""Link costs: their range, and the ``cost=N`` option an endpoint string may carry.

Sans-IO. A link's routing cost (1 to 255) can be given to
``Context.connect``/``listen`` as ``cost=``, or written into the endpoint
string itself as one more option, ``tcp:host:7117:cost=10``, which is how a
configuration file, ``--peer``/``--listen`` and twistd set it. The option is
taken out before Twisted parses the rest.
"""

from __future__ import annotations

import re

__all__ = ["MAX_LINK_COST", "check_cost", "split_cost"]

#: the range of a link's routing cost (the mesh counts a busy link above it)
MAX_LINK_COST = 255

# A colon that separates endpoint arguments (Twisted escapes a literal one as "\:").
_SEPARATOR = re.compile(r"(?<!\\):")


def check_cost(cost: object) -> None:
    """Raise ValueError unless ``cost`` is an integer from 1 to MAX_LINK_COST."""
    if type(cost) is not int or not 1 <= cost <= MAX_LINK_COST:
        raise ValueError(f"link cost must be an integer from 1 to {MAX_LINK_COST}, not {cost!r}")


def split_cost(endpoint: str) -> tuple[str, int | None]:
    """The endpoint string without its ``cost=N`` option, and N (None if absent)."""
    parts = _SEPARATOR.split(endpoint)
    found = [i for i, part in enumerate(parts) if i > 0 and part.startswith("cost=")]
    if not found:
        return endpoint, None
    if len(found) > 1:
        raise ValueError(f"endpoint {endpoint!r} gives cost= more than once")
    text = parts[found[0]][len("cost="):]
    try:
        cost = int(text)
    except ValueError:
        raise ValueError(
            f"link cost must be an integer from 1 to {MAX_LINK_COST}, not {text!r}"
        ) from None
    check_cost(cost)
    del parts[found[0]]
    return ":".join(parts), cost
