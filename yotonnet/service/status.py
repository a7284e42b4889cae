"""What a node can say about itself: plain status data and Prometheus metrics.

:func:`node_status` gathers one context's identity, links, dialers, routes,
the mesh as its routing table sees it (nodes and edges, busy ones marked),
the channels hosted locally (their ends and per-channel message counts) and
its counters into JSON-serialisable data (``yotonnet status --json``, the HTTP
``/status`` endpoint and the live page all show this). :func:`prometheus_text`
renders the same numbers in the Prometheus text exposition format 0.0.4.

Both only read the context; they never change it, so they are safe to call
at any time from the reactor thread. Every key of ``context.counters`` is
reported, whatever it is named, so counters added later (flow control's
drops and pauses) show up here without changes.
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Iterable
from typing import Any

from ..core.names import channel_id, printable
from ..core.topology import BUSY_LINK_COST
from ..mesh.context import Context
from ..mesh.link import BUSY, UP

__all__ = ["node_status", "prometheus_text", "mark_started", "PROMETHEUS_CONTENT_TYPE"]

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The context keeps no start time: the first time this module sees a context
# (a status site is made when a node starts) stands in for it.
_first_seen: weakref.WeakKeyDictionary[Context, float] = weakref.WeakKeyDictionary()

# Help for the counters the context has today; others get a generic line.
_COUNTER_HELP = {
    "forwarded": "Frames this node forwarded to a neighbour on behalf of another node.",
    "no_route": "Unicast frames dropped because no route to their destination was known.",
    "hop_limit": "Frames dropped because their hop limit ran out.",
    "control_in": "Routing control messages received.",
    "control_out": "Routing control messages sent.",
    "credit_in": "Flow-control CREDIT frames received from neighbours.",
    "credit_out": "Flow-control CREDIT frames sent to neighbours.",
    "flow_queued": "Blocks queued for a neighbour that had no credit left on their channel.",
    "flow_dropped": "Blocks dropped for a neighbour gone silent (busy) or closed.",
    "links_rerouted": "Times a link's peer fell silent past reroute_after (routed around).",
    "requests_resent": "Idempotent calls sent again after the path they took broke.",
    "requests_duplicate": "Copies of idempotent requests taken only once (answered again).",
    "latest_dropped": "Frames for latest subscribers given up for newer ones (no credit).",
    "producer_pauses": "Times flow control paused a publisher's producer.",
    "repair_asked": "Requests for missing messages this node's subscribers sent.",
    "repair_answered": "Requests for missing messages this node's publishers answered.",
    "repair_resent": "Messages sent again to a subscriber that missed them.",
    "repair_lost": "Messages given up: told to subscribers as lost (a gap never repaired).",
    "repair_discarded": "Duplicate messages dropped before reaching subscribers.",
    "repair_reorder_dropped": "Messages past a gap not held (reorder_bytes full); sent again.",
    "retention_evicted": "Retained messages pushed out by retention_bytes.",
    "repair_acks": "Acknowledgements this node's subscribers sent to publishers.",
    "repair_followers_lost": "Subscribers a publisher stopped waiting for (silent too long).",
    "repair_untracked": "Deliveries or acknowledgements not tracked (max_repair_tracks).",
    "repair_refused": "Requests for missing messages refused (a subscriber asking too much).",
    "reply_polls": "Times the context polled a link for a call's reply before sleeping.",
    "reply_polls_caught": "Reply polls the link became readable in (the reactor never slept).",
    "reply_polls_other": "Reply polls ended by other input the reactor had to read.",
    "reply_polls_skipped": "Calls not polled for: their link's polls had run out lately.",
}

# What the repair of lossless channels holds now (Repair.stats), as gauges.
_REPAIR_HELP = {
    "retained_bytes": "Bytes of recent messages kept to send again to lossless subscribers.",
    "retained_channels": "Channels published here whose recent messages are kept.",
    "followers": "Lossless subscribers whose acknowledgements this node's publishers track.",
    "reorder_bytes": "Bytes received past a gap, waiting for it to be repaired.",
    "readers": "Publishers (per channel) this node's lossless subscribers follow.",
    "repairs_pending": "Requests to send missing messages again not yet answered in full.",
}

# Keys of Link.info() exported above; any other number in it is exported as untyped.
_LINK_KNOWN = {
    "frames_in", "frames_out", "bytes_in", "bytes_out", "up", "busy", "quiet", "silent_for",
}

_ROLE_OF_TABLE = (("sub", "pubsub", "subscribers"), ("rep", "requests", "repliers"),
                  ("state", "state", "holders"))

# Numbers a channel end may keep (summed over the local ends; absent ones count 0):
# subscribers' received/discarded/dropped (by their policy)/missed (gaps)/backlog
# (bytes not yet taken)/pending (messages not yet taken), repliers' served/in_flight.
_END_FIELDS = (
    "received", "discarded", "dropped", "missed", "backlog", "pending", "served", "in_flight",
)


def mark_started(context: Context) -> None:
    """Note now as the context's start if it has no start time yet (see ``uptime``)."""
    if getattr(context, "started_at", None) is None and context not in _first_seen:
        _first_seen[context] = context.reactor.seconds()


def _hex(node_id: int) -> str:
    return f"{node_id:016x}"


def _plain(value: Any) -> Any:
    """A JSON-serialisable copy of ``value`` (unknown objects become their str)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return str(value)


def _uptime(context: Context, now: float) -> float:
    started = getattr(context, "started_at", None)
    if started is None:
        mark_started(context)
        started = _first_seen[context]
    return max(0.0, now - started)


def _listening(context: Context) -> list[str]:
    out = []
    for port in context.ports:
        try:
            host = port.getHost()
        except Exception:  # noqa: BLE001 - a closed port still gets a line
            out.append(repr(port))
            continue
        if hasattr(host, "port"):
            out.append(f"{host.type.lower()}:{host.host}:{host.port}")
        else:
            out.append(f"unix:{getattr(host, 'name', host)}")
    return out


def _links(context: Context, now: float) -> list[dict]:
    links = []
    for link in context.links.values():
        info = link.info()
        info["up"] = link.status in (UP, BUSY)
        info["busy"] = link.status == BUSY
        # Routed around for its silence, before (or without) being declared busy.
        info["quiet"] = bool(link.quiet)
        # Seconds since the peer last sent anything: what "busy" is judged on.
        info["silent_for"] = round(max(0.0, now - link.last_seen), 3)
        links.append(_plain(info))
    links.sort(key=lambda i: (i["peer_name"] or "", i["peer"] or ""))
    return links


def _mesh(snapshot: dict) -> tuple[list[dict], list[dict], list[dict]]:
    """Nodes, edges and routes from a routing snapshot, with names beside the ids."""
    names = {n["id"]: n["name"] for n in snapshot["nodes"]}
    nodes = []
    half: dict[tuple[str, str], int] = {}
    for n in snapshot["nodes"]:
        nodes.append({
            "id": n["id"],
            "name": n["name"],
            "reachable": n["reachable"],
            "distance": n["distance"],
            "local": n["id"] == snapshot["node"],
            "neighbours": sorted(n["links"]),
            "interests": len(n["interests"]),
            # leaf contexts attached to it (they are not nodes of the mesh)
            "leaves": n.get("leaves", 0),
        })
        for peer, cost in n["links"].items():
            half[(n["id"], peer)] = cost
    edges = []
    for (a, b), cost in sorted(half.items()):
        if a > b and (b, a) in half:
            continue  # listed from the other end already
        back = half.get((b, a))
        worst = max(cost, back if back is not None else cost)
        edges.append({
            "a": a,
            "b": b,
            "a_name": names.get(a),
            "b_name": names.get(b),
            "cost": worst,
            "busy": worst >= BUSY_LINK_COST,
            # Routing uses a link only once both ends list it.
            "confirmed": back is not None,
        })
    routes = []
    dist = {n["id"]: n["distance"] for n in snapshot["nodes"]}
    for dest, hop in snapshot["routes"].items():
        routes.append({
            "dest": dest,
            "dest_name": names.get(dest),
            "next_hop": hop,
            "next_hop_name": names.get(hop),
            "distance": dist.get(dest),
        })
    nodes.sort(key=lambda n: (not n["local"], n["name"], n["id"]))
    return nodes, edges, routes


def _channels(context: Context, snapshot: dict) -> list[dict]:
    """Channels with local ends (and ones this node published on), with their counters."""
    chans: dict[int, dict] = {}

    def entry(chan: int, pattern: str | None, name: str | None) -> dict:
        e = chans.get(chan)
        if e is None:
            e = chans[chan] = {
                "id": _hex(chan),
                "name": name,
                "pattern": pattern,
                "type": context.node.channel_type(chan),
                "roles": [],
                "publishers": 0,
                "subscribers": 0,
                "repliers": 0,
                "states": 0,
                "policies": [],
                "published": 0,
                **{f: 0 for f in _END_FIELDS},
                "errors": 0,
                "remote_holders": 0,
            }
        elif e["name"] is None and name is not None:
            e["name"] = name
        return e

    # A pub/sub channel's flow to latest subscribers has its own id: show it as part of
    # the channel.
    latest_of: dict[int, int] = {}
    for role, part, table_name in _ROLE_OF_TABLE:
        table = getattr(getattr(context.node, part), table_name)
        for chan, ends in table.items():
            if not ends:
                continue
            pattern = ends[0].pattern
            if pattern == "latest":
                pubsub_id = channel_id("pubsub", ends[0].name)
                latest_of[chan] = pubsub_id
                chan, pattern = pubsub_id, "pubsub"
            e = entry(chan, pattern, ends[0].name)
            e["roles"].append(role)
            for end in ends:
                for f in _END_FIELDS:
                    value = getattr(end, f, 0)
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        e[f] += value
                e["errors"] += len(getattr(end, "errors", ()))
                policy = getattr(end, "policy", None)
                if isinstance(policy, str) and policy not in e["policies"]:
                    e["policies"].append(policy)
            key = {"sub": "subscribers", "rep": "repliers", "state": "states"}[role]
            e[key] += len(ends)
    # Publishers hold no interest, but the core keeps them for flow control.
    publishers = context.node.pubsub.publishers
    for chan, pubs in publishers.items():
        if pubs:
            e = entry(chan, "pubsub", pubs[0].name)
            if e["type"] is None:
                e["type"] = pubs[0].message_type.name
            e["roles"].append("pub")
            e["publishers"] += len(pubs)
    for pubs in publishers.values():
        for pub in pubs:
            latest_of[pub.latest_id] = pub.channel_id
    for chan, count in context.node.pubsub.published().items():
        if chan in latest_of:
            continue  # the same messages, also sent to latest subscribers
        e = entry(chan, "pubsub", None)
        e["published"] = count
    # Other reachable nodes that hold each channel (their records say so).
    me = snapshot["node"]
    for node in snapshot["nodes"]:
        if node["id"] == me or not node["reachable"]:
            continue
        for chan_hex in node["interests"]:
            chan = int(chan_hex, 16)
            chan = latest_of.get(chan, chan)
            if chan in chans:
                chans[chan]["remote_holders"] += 1
    return sorted(chans.values(), key=lambda e: (e["name"] is None, e["name"] or "", e["id"]))


def node_status(context: Context) -> dict:
    """Everything one node knows about itself and the mesh, as JSON-serialisable data."""
    # Messages published on the lane this turn are charged to the retention and the
    # credit only when it closes (yotonnet.core.pubsub.Lane): closed here, the figures
    # read true even when asked in the turn that published.
    context.node.pubsub.lane.clear()
    now = context.reactor.seconds()
    snapshot = context.routing.snapshot()
    nodes, edges, routes = _mesh(snapshot)
    links = _links(context, now)
    totals = {k: sum(link[k] for link in links) for k in
              ("frames_in", "frames_out", "bytes_in", "bytes_out")}
    return {
        "id": _hex(context.node_id),
        "name": context.name,
        "time": now,
        "uptime": _uptime(context, now),
        "closed": context.closed,
        "listening": _listening(context),
        "links": links,
        "links_up": sum(1 for link in links if link["up"]),
        "links_busy": sum(1 for link in links if link["busy"]),
        # this node's leaves (their links are in "links" too, with role "leaf")
        "leaves": _plain(context.node.topology.leaves.snapshot()),
        # Summed over the links open now: a closed link's traffic leaves the totals.
        "traffic": totals,
        "dialers": [_plain(d.info()) for d in context.dialers],
        "routes": routes,
        "nodes": nodes,
        "edges": edges,
        "channels": _channels(context, snapshot),
        "calls_pending": len(context.node.requests.calls),
        # what the repair of lossless channels holds now (yotonnet.core.repair)
        "repair": context.node.pubsub.repair.stats(),
        "counters": _plain(dict(context.counters)),
    }


# --- Prometheus text format

_METRIC_NAME = re.compile(r"[^a-zA-Z0-9_:]")


def _metric_name(text: str) -> str:
    name = _METRIC_NAME.sub("_", text)
    return name if name and not name[0].isdigit() else "_" + name


def _label_value(value: Any) -> str:
    text = "" if value is None else str(value)
    # Control characters (a terminal escape in a name) become visible escapes first: the
    # format itself only escapes newlines, and people read /metrics with curl too.
    text = printable(text, len(text) * 10 + 1)
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class _Exposition:
    """Builds families in order; a family's samples stay together, as the format requires."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.seen: set[str] = set()

    def family(
        self, name: str, kind: str, help_text: str,
        samples: Iterable[tuple[dict[str, Any], float]],
    ) -> None:
        if name in self.seen:
            raise ValueError(f"metric family {name} emitted twice")
        self.seen.add(name)
        self.lines.append(f"# HELP {name} {_help(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if labels:
                text = ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items())
                self.lines.append(f"{name}{{{text}}} {_number(value)}")
            else:
                self.lines.append(f"{name} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def prometheus_text(context: Context) -> str:
    """The node's metrics in the Prometheus text exposition format (version 0.0.4)."""
    status = node_status(context)
    out = _Exposition()
    me = {"node": status["id"], "name": status["name"]}
    out.family("yotonnet_node_info", "gauge", "This node's id and name (always 1).", [(me, 1)])
    out.family("yotonnet_uptime_seconds", "gauge",
               "Seconds since the node started (or since its status was first asked for).",
               [({}, status["uptime"])])
    out.family("yotonnet_links_up", "gauge", "Links to peers that are up or busy.",
               [({}, status["links_up"])])
    out.family("yotonnet_links_busy", "gauge",
               "Links whose peer has been silent past busy_timeout.",
               [({}, status["links_busy"])])
    reachable = sum(1 for n in status["nodes"] if n["reachable"] and not n["local"])
    out.family("yotonnet_nodes_reachable", "gauge", "Other nodes this node has a route to.",
               [({}, reachable)])
    out.family("yotonnet_nodes_known", "gauge", "Node records held (reachable or not).",
               [({}, len(status["nodes"]))])
    out.family("yotonnet_calls_pending", "gauge", "Requests sent and not yet answered.",
               [({}, status["calls_pending"])])
    for key, text in _REPAIR_HELP.items():
        out.family(f"yotonnet_repair_{key}", "gauge", text, [({}, status["repair"][key])])

    def link_labels(link: dict) -> dict[str, Any]:
        return {"peer": link["peer"] or "", "peer_name": link["peer_name"],
                "direction": link["direction"]}

    links = status["links"]
    out.family("yotonnet_link_up", "gauge", "1 if the link to this peer is up (busy counts).",
               [(link_labels(x), x["up"]) for x in links])
    out.family("yotonnet_link_busy", "gauge", "1 if the peer has been silent past busy_timeout.",
               [(link_labels(x), x["busy"]) for x in links])
    out.family("yotonnet_link_quiet", "gauge",
               "1 if the peer has been silent past reroute_after (traffic goes around it).",
               [(link_labels(x), x["quiet"]) for x in links])
    out.family("yotonnet_link_silent_seconds", "gauge",
               "Seconds since the peer last sent anything.",
               [(link_labels(x), x["silent_for"]) for x in links])
    for field, help_text in (
        ("frames_in", "Frames received on the link."),
        ("frames_out", "Frames sent on the link."),
        ("bytes_in", "Bytes received on the link."),
        ("bytes_out", "Bytes sent on the link."),
    ):
        out.family(f"yotonnet_link_{field}_total", "counter", help_text,
                   [(link_labels(x), x[field]) for x in links])
    # Numbers a newer Link.info() adds (flow-control windows, queues) show up untyped.
    extra = sorted({
        k for x in links for k, v in x.items()
        if k not in _LINK_KNOWN and isinstance(v, (int, float)) and not isinstance(v, bool)
    })
    for key in extra:
        name = f"yotonnet_link_{_metric_name(key)}"
        if name in out.seen:
            continue
        out.family(name, "untyped", f"Link.info() field {key!r}.",
                   [(link_labels(x), x[key]) for x in links
                    if isinstance(x.get(key), (int, float)) and not isinstance(x[key], bool)])

    def chan_labels(chan: dict) -> dict[str, Any]:
        return {"channel": chan["name"] or "", "id": chan["id"], "pattern": chan["pattern"] or ""}

    chans = status["channels"]
    out.family("yotonnet_channel_local_ends", "gauge",
               "Publishers, subscribers, repliers and state holders of the channel here.",
               [({**chan_labels(c), "role": role}, c[key]) for c in chans
                for role, key in (("pub", "publishers"), ("sub", "subscribers"),
                                  ("rep", "repliers"), ("state", "states"))
                if role in c["roles"]])
    for field, metric, kind, help_text in (
        ("published", "published_total", "counter",
         "Messages this node published on the channel."),
        ("received", "received_total", "counter", "Messages its subscribers received."),
        ("discarded", "discarded_total", "counter",
         "Duplicate or stale messages its subscribers discarded."),
        ("dropped", "dropped_total", "counter",
         "Messages its subscribers dropped by their policy (oldest first when full)."),
        ("missed", "missed_total", "counter",
         "Messages its subscribers never got (gaps in a publisher's sequence)."),
        ("served", "served_total", "counter", "Requests its repliers answered."),
        ("pending", "pending", "gauge", "Messages received and not yet taken by recv()."),
        ("backlog", "backlog_bytes", "gauge", "Bytes received and not yet taken by recv()."),
        ("in_flight", "in_flight", "gauge", "Requests its repliers are still working on."),
        ("errors", "errors", "gauge", "Recent type or decoding errors kept by its ends."),
    ):
        out.family(f"yotonnet_channel_{metric}", kind, help_text,
                   [(chan_labels(c), c[field]) for c in chans])
    # The context's counters last, whatever their names: one that would clash with a
    # family above is left out here (node_status still shows it) rather than break it.
    for key, value in sorted(context.counters.items(), key=lambda kv: str(kv[0])):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue  # only numbers are counters; node_status still shows the rest
        name = f"yotonnet_{_metric_name(str(key))}_total"
        if name in out.seen:
            continue
        out.family(name, "counter", _COUNTER_HELP.get(key, f"Context counter {key!r}."),
                   [({}, value)])
    return out.text()
