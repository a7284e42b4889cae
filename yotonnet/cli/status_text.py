"""The human-readable form of ``yotonnet status``: :func:`format_status` and its helpers."""

from __future__ import annotations


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def format_status(report: dict) -> str:
    """The human-readable form of ``yotonnet status``."""
    st = report["node"]
    client = report["client"]["id"]
    lines = [
        f"node {st.get('name')}  id {st.get('id')}  up {st.get('uptime', 0):.1f} s  "
        f"(via {report['endpoint']})",
        f"listening: {', '.join(st.get('listening', [])) or '-'}",
    ]
    links = st.get("links", [])
    lines.append(f"links ({len(links)}):")
    for link in links:
        who = link.get("peer_name") or "?"
        if link.get("peer") == client:
            who += " (this command)"
        lines.append(
            f"  {who:<32} {link.get('status', '?'):<6} {link.get('direction', ''):<3}  "
            f"frames {link.get('frames_in', 0)}/{link.get('frames_out', 0)} in/out  "
            f"bytes {_size(link.get('bytes_in', 0))}/{_size(link.get('bytes_out', 0))}"
        )
    routes = st.get("routes", [])
    lines.append(f"routes ({len(routes)}):")
    for r in routes:
        lines.append(f"  {r.get('dest_name') or r.get('dest')} via "
                     f"{r.get('next_hop_name') or r.get('next_hop')}  distance {r.get('distance')}")
    chans = st.get("channels", [])
    lines.append(f"channels ({len(chans)}):")
    for c in chans:
        roles = ",".join(c.get("roles", [])) or "pub"
        lines.append(
            f"  {c.get('name') or c.get('id'):<32} {c.get('pattern') or '?':<7} {roles:<9} "
            f"published {c.get('published', 0)}  received {c.get('received', 0)}  "
            f"served {c.get('served', 0)}  remote holders {c.get('remote_holders', 0)}"
        )
    counters = st.get("counters", {})
    lines.append("counters: " + ("  ".join(f"{k} {v}" for k, v in sorted(counters.items()))
                                 or "-"))
    nodes = report["mesh"]["nodes"]
    lines.append(f"mesh, as this command sees it ({len(nodes)} other nodes):")
    names = {n["id"]: n["name"] for n in nodes}
    for n in sorted(nodes, key=lambda n: (not n["reachable"], n["name"])):
        peers = ", ".join(
            names.get(p, "this command" if p == client else p) for p in sorted(n["links"])
        )
        where = f"distance {n['distance']}" if n["reachable"] else "unreachable"
        lines.append(f"  {n['name']:<32} {where:<12} links: {peers or '-'}")
    return "\n".join(lines) + "\n"
