"""Control-traffic benchmark: a trusted peer flooding a node with routing records, and
the decode cost of a CONTROL frame of empty lists.

Run ``.venv/bin/python benchmarks/bench_records.py``. In one process, on an
in-memory mesh (:class:`yotonnet.testing.MemoryMesh`): a target node ``t``
holding a state value and serving a reply channel (as a node does once a
client ran ``yotonnet state set``), a trusted neighbour ``p`` and another
neighbour ``q``. For N in 500, 2,000 and 4,000, ``p``'s link delivers, in
64 KiB reads as TCP would, a record of ``p`` listing N fake nodes and the N
fake nodes' records (each listing ``p`` back and subscribing to a channel of
its own). Printed per N: the CPU time of ``t`` taking them (process time
around the reads, best of ``--repeats``), and, as a baseline measured in the
same process, the CPU time of only decoding and parsing the same records
(``decode_object`` and ``NodeState.from_wire``); their ratio is what the node
spends beyond reading its input, and should not grow with N. Also printed:
the routing changes acted on and the shortest-path runs, where the copy of
yotonnet counts them.

With ``--drip``, the same floods come one record per read as well (an
attacker pacing its frames, which defeats batching per read): as above; with
a call of ``t`` pending (checked for a lost replier after changes that may
cut one off); and with the state channel held by ``q`` too, so that ``t``
looks for new holders to tell its value after every change, which needs the
routes: one shortest-path run per read, the case that stays quadratic.

The decode section times ``decode_object`` (no bound, as for user payloads)
on a 16 MiB frame's worth of empty lists, with the memory it allocates
(tracemalloc peak, in a separate run), and ``wire.decode_control`` on it and
on a 1 MiB one (refused by the size check and the value bound).

Options: ``--yotonnet-path DIR`` (benchmark another copy of the package, e.g.
``git archive`` of an older commit), ``--compare DIR`` (run this script
under DIR's copy too and print before/after with ratios), ``--json``,
``--quick`` (N up to 2,000), ``--repeats``, ``--drip``.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import time
import tracemalloc

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SIZES = (500, 2000, 4000)
READ = 65536
MiB = 1024 * 1024


def flood_case(n: int, read: int = READ, extra: str = "") -> dict:
    """One flood of ``n`` records into a fresh mesh, in reads of ``read`` bytes (0: one
    record per read), with a call of t pending (``extra`` "call") or its state channel
    held by q too ("shared"); CPU seconds and counts."""
    from twisted.internet import defer

    from yotonnet import ContextConfig, RepChannel, ReqChannel, StateChannel
    from yotonnet.core import wire
    from yotonnet.core.messages import decode_object, encode_object
    from yotonnet.core.names import channel_id
    from yotonnet.core.routing import NodeState
    from yotonnet.core.wire import FrameKind
    from yotonnet.testing import MemoryMesh

    class Echo(RepChannel):
        def echo(self, value):
            return value

        def hang(self):
            return defer.Deferred()

    mesh = MemoryMesh(names=["t", "p", "q"], seed=5, config=ContextConfig())
    t, p, q = mesh
    conn = mesh.link(p, t)
    mesh.link(q, t)
    StateChannel(t, "settings").send({"volume": 3})
    Echo(q, "echo")
    mesh.settle()
    if extra == "shared":
        StateChannel(q, "settings")
        mesh.settle()
    if extra == "call":
        call = ReqChannel(t, "echo", timeout=3600).call("hang")
        call.addErrback(lambda _: None)
        mesh.settle()
    fakes = [(1 << 62) + i for i in range(n)]
    mine = p.routing.local
    links = [[peer, 1] for peer in mine.links] + [[f, 1] for f in fakes]
    records = [[p.node_id, p.name, mine.version + 1000, links, []]]
    for i, fake in enumerate(fakes):
        records.append([fake, f"fake-{i}", 1, [[p.node_id, 1]],
                        [[channel_id("pubsub", f"fake{i}"), "sub", "OBJECT", 1]]])
    payloads = [encode_object(["node", r]) for r in records]
    frames = [wire.encode_frame(FrameKind.CONTROL, pl) for pl in payloads]
    data = b"".join(frames)
    pieces = frames if not read else [data[at:at + read] for at in range(0, len(data), read)]

    start = time.process_time()
    for pl in payloads:
        NodeState.from_wire(decode_object(pl)[1])
    parse = time.process_time() - start

    transport = conn.link_of(p).transport
    changes = t.counters.get("routing_changes")
    runs = getattr(t.routing, "route_computations", None)
    start = time.process_time()
    for piece in pieces:
        transport.write(piece)
        conn.pump()
    flood = time.process_time() - start
    taken = len(t.routing.nodes) - 3
    result = {
        "n": n, "taken": taken, "cpu": flood, "parse": parse, "reads": len(pieces),
        "case": ("64 KiB reads" if read else "1 record/read")
        + {"": "", "call": ", a call pending", "shared": ", state shared"}[extra],
        "routing_changes": None if changes is None else t.counters["routing_changes"] - changes,
        "route_computations": None if runs is None else t.routing.route_computations - runs,
    }
    mesh.close()
    return result


def decode_case() -> dict:
    from yotonnet.core import wire
    from yotonnet.core.messages import DecodeError, decode_object

    def empty_lists(total: int) -> bytes:
        count = (total - 5) // 5
        return b"l" + struct.pack("<I", count) + b"l\0\0\0\0" * count

    big = empty_lists(16 * MiB - wire.HEADER_SIZE)
    start = time.process_time()
    value = decode_object(big)
    cpu = time.process_time() - start
    count = len(value)
    del value
    tracemalloc.start()
    value = decode_object(big)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del value
    result = {"lists": count, "decode_cpu": cpu, "decode_peak_mb": peak / 1e6}
    decode_control = getattr(wire, "decode_control", None)
    if decode_control is not None:
        limit = wire.DEFAULT_MAX_CONTROL_FRAME
        for key, payload in (("control_16mib_cpu", big),
                             ("control_1mib_cpu", empty_lists(limit - wire.HEADER_SIZE))):
            start = time.process_time()
            try:
                decode_control(payload, limit)
            except (wire.ProtocolError, DecodeError):
                pass
            result[key] = time.process_time() - start
    return result


def run(sizes: tuple[int, ...], repeats: int, drip: bool) -> dict:
    cases = [(READ, "")] + [(0, ""), (0, "call"), (0, "shared")] * drip
    floods = []
    for read, extra in cases:
        for n in sizes:
            runs = [flood_case(n, read, extra) for _ in range(repeats)]
            best = min(runs, key=lambda r: r["cpu"])
            best["parse"] = min(r["parse"] for r in runs)
            floods.append(best)
    import yotonnet

    return {"yotonnet": os.path.dirname(os.path.dirname(yotonnet.__file__)),
            "floods": floods, "decode": decode_case()}


def show(label: str, report: dict) -> None:
    print(f"{label}: yotonnet from {report['yotonnet']}")
    print(f"  {'case':<28} {'nodes':>6} {'taken':>6} {'CPU s':>8} {'parse s':>8} {'ratio':>7} "
          f"{'reads':>6} {'changes':>8} {'SPF runs':>9}")
    for f in report["floods"]:
        ratio = f["cpu"] / f["parse"] if f["parse"] else float("nan")
        changes, runs = (
            "-" if f[k] is None else str(f[k]) for k in ("routing_changes", "route_computations")
        )
        print(f"  {f['case']:<28} {f['n']:>6} {f['taken']:>6} {f['cpu']:>8.3f} {f['parse']:>8.3f} "
              f"{ratio:>7.1f} "
              f"{f['reads']:>6} {changes:>8} {runs:>9}")
    d = report["decode"]
    line = (f"  16 MiB CONTROL payload of {d['lists']} empty lists, decode_object (no bound): "
            f"{d['decode_cpu']:.2f} s CPU, {d['decode_peak_mb']:.0f} MB allocated")
    if "control_16mib_cpu" in d:
        line += (f"; decode_control refuses it in {d['control_16mib_cpu'] * 1e6:.0f} us, "
                 f"a 1 MiB one in {d['control_1mib_cpu'] * 1e6:.0f} us")
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--yotonnet-path", default=ROOT)
    parser.add_argument("--compare", metavar="DIR", help="also run under this copy (before)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--drip", action="store_true", help="also one record per read")
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.yotonnet_path))
    sizes = SIZES[:2] if args.quick else SIZES
    if args.compare:
        cmd = [sys.executable, os.path.abspath(__file__), "--json", "--yotonnet-path",
               args.compare, "--repeats", str(args.repeats)] + ["--quick"] * args.quick
        cmd += ["--drip"] * args.drip
        before = json.loads(subprocess.run(cmd, capture_output=True, text=True,
                                           check=True).stdout)
    report = run(sizes, args.repeats, args.drip)
    if args.json:
        print(json.dumps(report))
        return
    if args.compare:
        show("before", before)
        print()
    show("after" if args.compare else "result", report)
    if args.compare:
        print(f"\n  {'case':<28} {'nodes':>5}  CPU before/after")
        for b, a in zip(before["floods"], report["floods"], strict=True):
            print(f"  {a['case']:<28} {a['n']:>5}  {b['cpu']:.3f} s / {a['cpu']:.3f} s = "
                  f"{b['cpu'] / a['cpu']:.1f}x")


if __name__ == "__main__":
    main()
