"""The human-readable form of ``yotonnet status``: :func:`format_status` and its helpers.

Everything in the report came from other nodes (the node asked, and the
records of the mesh), so every value is shown through :func:`_t`, which
escapes control characters: a name cannot clear the screen, write the
clipboard or start a line of its own.
"""

from __future__ import annotations

from typing import Any

from ..core.names import printable
from .output import int_to_json

#: longest value shown (a channel name is at most 200 characters, escapes make it longer)
_LIMIT = 400


def _t(value: Any) -> str:
    """``value`` as text that is safe on a terminal."""
    return printable(value, _LIMIT)


def _n(value: Any, spec: str = "") -> str:
    """A number formatted with ``spec``; anything else (a bad reply) shown as escaped text."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _t(value)
    if isinstance(value, int) and isinstance(int_to_json(value), dict):
        return _t(hex(value))  # too long for decimal (see yotonnet.cli.output)
    return format(value, spec)


def _size(n: Any) -> str:
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return _t(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def format_status(report: dict) -> str:
    """The human-readable form of ``yotonnet status``.

    Raises ``TypeError``, ``AttributeError``, ``KeyError`` or ``ValueError`` when the
    report is not shaped like :func:`yotonnet.service.status.node_status` output (a node of
    another version, or a hostile one); ``yotonnet status`` then says so.
    """
    st = report["node"]
    client = report["client"]["id"]
    lines = [
        f"node {_t(st.get('name'))}  id {_t(st.get('id'))}  up {_n(st.get('uptime', 0), '.1f')} s"
        f"  (via {_t(report['endpoint'])})",
        f"listening: {', '.join(_t(x) for x in st.get('listening', [])) or '-'}",
    ]
    links = st.get("links", [])
    lines.append(f"links ({len(links)}):")
    for link in links:
        role = "leaf " if link.get("role") == "leaf" else ""
        who = _t(link.get("peer_name") or "?")
        if link.get("peer") == client:
            who += " (this command)"
        status = _t(link.get("status", "?"))
        if link.get("quiet") and not link.get("busy"):
            status += " (quiet: routed around)"
        lines.append(
            f"  {role}{who:<32} {status:<6} "
            f"{_t(link.get('direction', '')):<3}  "
            f"frames {_n(link.get('frames_in', 0))}/{_n(link.get('frames_out', 0))} in/out  "
            f"bytes {_size(link.get('bytes_in', 0))}/{_size(link.get('bytes_out', 0))}"
        )
    routes = st.get("routes", [])
    lines.append(f"routes ({len(routes)}):")
    for r in routes:
        lines.append(f"  {_t(r.get('dest_name') or r.get('dest'))} via "
                     f"{_t(r.get('next_hop_name') or r.get('next_hop'))}  "
                     f"distance {_t(r.get('distance'))}")
    chans = st.get("channels", [])
    lines.append(f"channels ({len(chans)}):")
    for c in chans:
        roles = ",".join(_t(x) for x in c.get("roles", [])) or "pub"
        lines.append(
            f"  {_t(c.get('name') or c.get('id')):<32} {_t(c.get('pattern') or '?'):<7} "
            f"{roles:<9} published {_n(c.get('published', 0))}  "
            f"received {_n(c.get('received', 0))}  served {_n(c.get('served', 0))}  "
            f"remote holders {_n(c.get('remote_holders', 0))}"
        )
    counters = st.get("counters", {})
    lines.append("counters: " + ("  ".join(
        f"{_t(k)} {_n(v)}" for k, v in sorted(counters.items(), key=lambda kv: str(kv[0]))
    ) or "-"))
    nodes = report["mesh"]["nodes"]
    seen_by = report["mesh"].get("seen_by")
    who = f"node {_t(seen_by)}" if seen_by else "this command"
    lines.append(f"mesh, as {who} sees it ({len(nodes)} other nodes):")
    names = {n["id"]: n["name"] for n in nodes}
    for n in sorted(nodes, key=lambda n: (not n["reachable"], str(n["name"]))):
        peers = ", ".join(
            _t(names.get(p, "this command" if p == client else p)) for p in sorted(n["links"])
        )
        where = f"distance {_t(n['distance'])}" if n["reachable"] else "unreachable"
        leaves = f"  leaves: {_n(n['leaves'])}" if n.get("leaves") else ""
        lines.append(f"  {_t(n['name']):<32} {where:<12} links: {peers or '-'}{leaves}")
    return "\n".join(lines) + "\n"
