"""Mesh benchmark: forwarding through a middle node, and convergence after a cut.

Run ``.venv/bin/python benchmarks/bench_mesh.py``. It measures

* **chain throughput**: 100-byte BINARY messages from a ``PubChannel`` to a
  ``SubChannel.subscribe`` counter through a chain of three processes on
  loopback TCP, A (publishes) -> B (only forwards) -> C (subscribes), beside
  the direct pair A -> C, in the same run. The ends are bench_peers.py's
  ``yot-pub`` (same publisher loop, paced by the transport's backpressure) and
  ``yot-sub`` (timed from the first message to the last); B is mesh_peers.py's
  ``mesh-fwd``. Repeated (3 times by default) with chain and direct runs
  interleaved; best rate of each reported, and ratio = chain / direct against
  the issue's bar (>= 0.8). Below it the CPU time per message of each process
  (least of the runs): a process near 100% busy is the bottleneck. The last
  row is the rate those CPU costs allow on the CPUs this process may use,
  min(CPUs / sum of costs, 1 / largest cost): with three processes on two
  CPUs the sum, not the forwarder alone, can be what caps the chain.
* **convergence**: a ``yotonnet.testing.MemoryMesh`` (one process, fake clock,
  seeded) of 25, 50 and 100 nodes as a ring, a grid (5x5, 5x10, 10x10) and a
  random connected graph with about 2 edges per node. Each is built and
  settled, then one link is cut (a link whose loss leaves the graph
  connected) and the mesh settled until no byte moves. Reported: N, E, the
  wall time of cut + settle (least of the repeats), the pump rounds, and the
  control messages sent and received across all contexts for that
  convergence (deltas of ``Context.counters``). The issue asks that this cost
  grow with edges, not with nodes x edges: control messages / E is printed
  per size, and the bar is that the 100-node figure stays within 3x the
  25-node one for every shape. The wall time includes the test double's own
  cost (each pump round advances the fake clock, which sorts and scans every
  timer, about 3 per node), so it grows faster than E; the message count is
  the figure that shows the protocol's scaling. After each cut every node
  must see all N nodes and no longer list the cut link, else the run counts
  as crashed.

The exit status is 0 whether bars pass or miss, 1 if a run crashed.

Options: ``--quick`` (short chain runs, 1 repeat), ``--json`` (a JSON document
on stdout; the tables go to stderr), ``--only`` (``chain``, ``mesh``),
``--repeats``, ``--seed`` (of the meshes), ``--yotonnet-path DIR`` (benchmark
another copy of the package), ``--profile DIR`` (instead of timing, run the
chain once under cProfile in all three processes, save the .pstats files in
DIR and print where the time goes, the forwarder first).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_core import (  # noqa: E402
    BATCH_BYTES,
    PAIR_TIMEOUT,
    ROOT,
    SMALL,
    Peer,
    RunError,
    log,
    run_pair,
)

MESH_PEERS = os.path.join(HERE, "mesh_peers.py")

# Sized for about 1-3 s per chain run on a 2-core VM.
FULL = {"chain": 1_000_000, "sizes": (25, 50, 100)}
QUICK = {"chain": 100_000, "sizes": (25, 50, 100)}
METRICS = ("chain", "mesh")
SHAPES = ("ring", "grid", "random")
BAR_CHAIN = 0.8
#: control messages per edge at the largest size may be at most this times the smallest's
BAR_SCALING = 3.0


# --- chain throughput


def run_chain(opts: dict, extra: dict | None = None) -> dict:
    """C listens, B dials C and listens, A dials B; the result is C's, with A's and B's.

    Shaped like bench_core.run_pair's answer (``peer`` is the publisher) plus
    ``fwd`` (the forwarder's result).
    """
    extra = extra or {}
    deadline = time.monotonic() + PAIR_TIMEOUT
    peers: list[Peer] = []

    def start(role: str, **more: object) -> Peer:
        peer = Peer(role, {**opts, **extra.get(role, {}), **more}, script=MESH_PEERS)
        peers.append(peer)
        return peer

    try:
        sub = start("yot-sub")
        fwd = start("mesh-fwd", port=int(sub.expect("PORT", deadline)))
        pub = start("yot-pub", port=int(fwd.expect("PORT", deadline)))
        result = sub.result(deadline)
        result["fwd"] = fwd.result(deadline)
        result["peer"] = pub.result(deadline)
    finally:
        # A crashed node leaves the others waiting: give them a moment, then kill them.
        short = min(deadline, time.monotonic() + 10)
        for peer in reversed(peers):
            peer.stop(short)
    return result


def chain_opts(plan: dict, base_opts: dict) -> dict:
    batch = max(1, min(1000, BATCH_BYTES // SMALL))
    return {**base_opts, "size": SMALL, "count": plan["chain"], "batch": batch}


def one_chain_run(side: str, plan: dict, base_opts: dict) -> dict:
    opts = chain_opts(plan, base_opts)
    if side == "chain":
        return run_chain(opts)
    return run_pair("yot-sub", "yot-pub", opts, "server")


def brief_chain(r: dict) -> str:
    # CPU busy fraction of each process over its own window: ~100% marks the bottleneck.
    parts = [f"sub {r['cpu'] / r['seconds']:.0%}"]
    if "fwd" in r:
        parts.append(f"fwd {r['fwd']['cpu'] / r['fwd']['seconds']:.0%}")
    parts.append(f"pub {r['peer']['send_cpu'] / r['peer']['send_seconds']:.0%}")
    return f"{r['rate']:12,.0f} msg/s  ({r['seconds']:.2f} s, cpu {', '.join(parts)})"


def summarize_chain(runs: list[dict]) -> dict:
    rates = [r["rate"] for r in runs]
    out = {
        "rate": max(rates),
        "rates": rates,
        "sub_cpu": min(r["cpu"] / r["messages"] for r in runs),
        "pub_cpu": min(r["peer"]["send_cpu"] / r["messages"] for r in runs),
    }
    if all("fwd" in r for r in runs):
        out["fwd_cpu"] = min(r["fwd"]["cpu"] / r["fwd"]["forwarded"] for r in runs)
    return out


def measure_chain(plan: dict, repeats: int, base_opts: dict) -> dict:
    raw: dict[str, list[dict]] = {"chain": [], "direct": []}
    for rep in range(repeats):
        # Alternate which side goes first so that drift hits both alike.
        sides = ("chain", "direct") if rep % 2 == 0 else ("direct", "chain")
        for side in sides:
            result = one_chain_run(side, plan, base_opts)
            raw[side].append(result)
            log(f"  run {rep + 1}/{repeats} {side:<6} {brief_chain(result)}")
    return {side: {**summarize_chain(runs), "runs": runs} for side, runs in raw.items()}


def chain_table(results: dict) -> tuple[list[str], dict]:
    chain, direct = results["chain"], results["direct"]
    ratio = chain["rate"] / direct["rate"]
    ok = ratio >= BAR_CHAIN
    bars = {"chain/direct ratio >= 0.8": {"ratio": ratio, "pass": ok}}
    head = f"{'metric':<30} {'A->B->C':>12} {'A->C':>12} {'ratio':>7}  bar"
    rows = [
        head,
        "-" * len(head),
        f"{'pub/sub 100 B (msg/s)':<30} {chain['rate']:>12,.0f} {direct['rate']:>12,.0f} "
        f"{ratio:>7.2f}  >= {BAR_CHAIN}: {'PASS' if ok else 'MISS'}",
    ]
    for key, name in (("pub_cpu", "publisher A"), ("fwd_cpu", "forwarder B"),
                      ("sub_cpu", "subscriber C")):
        c = chain.get(key)
        d = direct.get(key)
        cs = f"{c * 1e6:>12.2f}" if c is not None else f"{'-':>12}"
        ds = f"{d * 1e6:>12.2f}" if d is not None else f"{'-':>12}"
        rs = f"{c / d:>7.2f}" if c is not None and d is not None else ""
        rows.append(f"{'  ' + name + ' CPU (us/msg)':<30} {cs} {ds} {rs}")
    # What the CPUs allow: the busiest process caps the rate, and so does the sum of
    # all processes' CPU over the CPUs there are (three processes share two here).
    cpus = len(os.sched_getaffinity(0))
    ceilings = {}
    for side, r in (("chain", chain), ("direct", direct)):
        costs = [r[k] for k in ("pub_cpu", "fwd_cpu", "sub_cpu") if k in r]
        ceilings[side] = min(cpus / sum(costs), 1 / max(costs))
        r["cpu_ceiling"] = ceilings[side]
    rows.append(
        f"{f'CPU ceiling on {cpus} CPUs (msg/s)':<30} {ceilings['chain']:>12,.0f} "
        f"{ceilings['direct']:>12,.0f} {ceilings['chain'] / ceilings['direct']:>7.2f}"
    )
    return rows, bars


def profile_chain(directory: str, plan: dict, base_opts: dict, top: int) -> None:
    """Run the chain once under cProfile in all three processes and print the top."""
    import pstats

    os.makedirs(directory, exist_ok=True)
    roles = ("mesh-fwd", "yot-pub", "yot-sub")
    files = {r: os.path.join(directory, f"chain-{r}.pstats") for r in roles}
    res = run_chain(chain_opts(plan, base_opts),
                    extra={r: {"profile": f} for r, f in files.items()})
    log(f"\n=== chain A -> B -> C under cProfile: {brief_chain(res)}")
    for role in roles:
        log(f"\n--- {role}: {files[role]} (top {top} by own time)")
        stats = pstats.Stats(files[role], stream=sys.stderr)
        stats.strip_dirs().sort_stats("tottime").print_stats(top)


# --- convergence in memory


def grid_dims(n: int) -> tuple[int, int]:
    """The most nearly square rows x cols with rows * cols == n (10x10, 5x10, 5x5)."""
    rows = int(n**0.5)
    while n % rows:
        rows -= 1
    return rows, n // rows


def build(shape: str, n: int, seed: int):
    """A settled MemoryMesh of ``shape`` and the pair of contexts whose link to cut."""
    from yotonnet.testing import MemoryMesh

    mesh = MemoryMesh(n, seed=seed)
    if shape == "ring":
        for i in range(n):
            mesh.link(i, (i + 1) % n, settle=False)
        mesh.settle()
        return mesh, (mesh[0], mesh[1])
    if shape == "grid":
        rows, cols = grid_dims(n)
        for r in range(rows):
            for c in range(cols):
                i = r * cols + c
                if c + 1 < cols:
                    mesh.link(i, i + 1, settle=False)
                if r + 1 < rows:
                    mesh.link(i, i + cols, settle=False)
        mesh.settle()
        # A link in the middle: the detour around it is as short as a grid allows.
        i = (rows // 2) * cols + cols // 2 - 1
        return mesh, (mesh[i], mesh[i + 1])
    if shape == "random":
        mesh.link_random(extra=n)  # a spanning tree (n - 1) plus n more: ~2 edges per node
        pairs = [(c.client_context, c.server_context) for c in mesh.connections]
        # Cut a link that is not a bridge, so the mesh stays whole as in the other shapes.
        pick = random.Random(seed)
        candidates = [p for p in pairs if connected(mesh.contexts, pairs, without=p)]
        return mesh, pick.choice(candidates)
    raise ValueError(f"unknown shape {shape!r}")


def connected(nodes: list, pairs: list[tuple], without: tuple) -> bool:
    adj: dict[int, list] = {id(x): [] for x in nodes}
    for a, b in pairs:
        if (a, b) != without:
            adj[id(a)].append(b)
            adj[id(b)].append(a)
    seen = {id(nodes[0])}
    todo = [nodes[0]]
    while todo:
        for nxt in adj[id(todo.pop())]:
            if id(nxt) not in seen:
                seen.add(id(nxt))
                todo.append(nxt)
    return len(seen) == len(nodes)


def control_totals(mesh) -> tuple[int, int]:
    return (
        sum(ctx.counters["control_out"] for ctx in mesh),
        sum(ctx.counters["control_in"] for ctx in mesh),
    )


def converge_once(shape: str, n: int, seed: int) -> dict:
    t0 = time.perf_counter()
    mesh, (a, b) = build(shape, n, seed)
    try:
        build_seconds = time.perf_counter() - t0
        edges = len(mesh.connections)
        out0, in0 = control_totals(mesh)
        t0 = time.perf_counter()
        mesh.cut(a, b)  # both ends see connectionLost and flood new records at once
        rounds = mesh.settle()
        seconds = time.perf_counter() - t0
        out1, in1 = control_totals(mesh)
        # Converged means every node has the new picture, not only that the bytes stopped.
        for ctx in mesh:
            seen = len(ctx.routing.reachable())
            if seen != n:
                raise RunError(f"{shape} {n}: {ctx.name} reaches {seen} of {n} nodes after the cut")
            for x, y in ((a, b), (b, a)):
                if y.node_id in ctx.routing.nodes[x.node_id].links:
                    raise RunError(f"{shape} {n}: {ctx.name} still lists the cut link "
                                   f"{x.name}-{y.name}")
    finally:
        mesh.close()
    return {
        "nodes": n,
        "edges": edges,
        "cut": [a.name, b.name],
        "build_seconds": build_seconds,
        "seconds": seconds,
        "rounds": rounds,
        "control_out": out1 - out0,
        "control_in": in1 - in0,
    }


def measure_mesh(plan: dict, repeats: int, seed: int) -> dict:
    results: dict[str, dict[int, dict]] = {}
    for shape in SHAPES:
        results[shape] = {}
        for n in plan["sizes"]:
            runs = []
            for rep in range(repeats):
                try:
                    runs.append(converge_once(shape, n, seed))
                except RunError:
                    raise
                except Exception as e:  # e.g. a mesh that never settles
                    raise RunError(f"{shape} {n}: {type(e).__name__}: {e}") from e
                r = runs[-1]
                log(f"  run {rep + 1}/{repeats} {shape:<6} N={n:<3} E={r['edges']:<3} "
                    f"cut+settle {r['seconds'] * 1e3:7.2f} ms  {r['control_out']:5} control "
                    f"messages  (build {r['build_seconds']:.2f} s)")
            counts = {(r["control_out"], r["control_in"], r["rounds"]) for r in runs}
            best = min(runs, key=lambda r: r["seconds"])
            results[shape][n] = {
                **best,
                "times": [r["seconds"] for r in runs],
                # Seeded and on a fake clock: every repeat must cost the same messages.
                "deterministic": len(counts) == 1,
                "per_edge": best["control_out"] / best["edges"],
                "per_node_edge": best["control_out"] / (best["nodes"] * best["edges"]),
            }
    return results


def mesh_table(results: dict) -> tuple[list[str], dict]:
    head = (f"{'shape':<7} {'N':>4} {'E':>4} {'cut+settle ms':>13} {'rounds':>6} "
            f"{'ctl out':>8} {'ctl in':>8} {'ctl/E':>7} {'ctl/(N*E)':>10}")
    rows = [head, "-" * len(head)]
    bars = {}
    for shape, sizes in results.items():
        for n, r in sizes.items():
            note = "" if r["deterministic"] else "  (counts varied between repeats!)"
            rows.append(
                f"{shape:<7} {n:>4} {r['edges']:>4} {r['seconds'] * 1e3:>13.2f} "
                f"{r['rounds']:>6} {r['control_out']:>8} {r['control_in']:>8} "
                f"{r['per_edge']:>7.2f} {r['per_node_edge']:>10.4f}{note}"
            )
    rows.append("")
    for shape, sizes in results.items():
        small, large = min(sizes), max(sizes)
        growth = sizes[large]["per_edge"] / sizes[small]["per_edge"]
        ok = growth <= BAR_SCALING
        bars[f"{shape}: ctl/E at N={large} <= {BAR_SCALING:g}x N={small}"] = {
            "ratio": growth, "pass": ok,
        }
        per_edge = ", ".join(f"N={n}: {r['per_edge']:.2f}" for n, r in sizes.items())
        rows.append(
            f"{shape:<7} ctl/E {per_edge};  N={large}/N={small} = {growth:.2f}  "
            f"<= {BAR_SCALING:g}: {'PASS' if ok else 'MISS'}"
        )
    return rows, bars


# --- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (1 repeat)")
    parser.add_argument("--json", action="store_true", help="print a JSON document on stdout")
    parser.add_argument("--repeats", type=int, default=None, help="runs per side (default 3)")
    parser.add_argument("--only", default=",".join(METRICS),
                        help=f"comma-separated subset of {','.join(METRICS)}")
    parser.add_argument("--seed", type=int, default=1, help="seed of the in-memory meshes")
    parser.add_argument("--yotonnet-path", default=ROOT,
                        help="directory holding the yotonnet package (default: this repo)")
    parser.add_argument(
        "--eager-writes", choices=("on", "off"), default="on",
        help="the processes' ContextConfig.eager_writes (default on, as in yotonnet)",
    )
    parser.add_argument("--profile", metavar="DIR", help="profile the chain instead")
    parser.add_argument("--top", type=int, default=25, help="functions listed per profile")
    args = parser.parse_args(argv)

    plan = QUICK if args.quick else FULL
    repeats = args.repeats or (1 if args.quick else 3)
    metrics = [m for m in args.only.split(",") if m]
    unknown = set(metrics) - set(METRICS)
    if unknown:
        parser.error(f"unknown metric(s) {sorted(unknown)}; choose from {METRICS}")
    base_opts = {
        "yotonnet_path": os.path.abspath(args.yotonnet_path),
        "eager_writes": args.eager_writes == "on",
    }
    # The meshes run in this process: load the same copy of yotonnet as the children.
    sys.path.insert(0, base_opts["yotonnet_path"])
    import yotonnet

    base_opts["yotonnet_path"] = os.path.dirname(os.path.dirname(yotonnet.__file__))
    log(f"yotonnet from {base_opts['yotonnet_path']} (eager writes {args.eager_writes}); "
        f"python {sys.version.split()[0]}; {os.cpu_count()} CPUs; "
        f"load {os.getloadavg()[0]:.2f}")

    results: dict = {}
    try:
        if args.profile:
            profile_chain(args.profile, plan, base_opts, args.top)
            return 0
        if "chain" in metrics:
            results["chain"] = measure_chain(plan, repeats, base_opts)
        if "mesh" in metrics:
            results["mesh"] = measure_mesh(plan, repeats, args.seed)
    except RunError as e:
        log(f"benchmark run failed: {e}")
        return 1

    out = sys.stderr if args.json else sys.stdout
    bars: dict = {}
    if "chain" in results:
        lines, more = chain_table(results["chain"])
        bars.update(more)
        print(f"\nbest of {repeats} run(s) per side, 100-byte messages, loopback TCP, "
              "one process per node", file=out)
        print("\n".join(lines), file=out, flush=True)
    if "mesh" in results:
        lines, more = mesh_table(results["mesh"])
        bars.update(more)
        print(f"\nconvergence after one cut, MemoryMesh seed {args.seed}, fake clock; "
              f"wall time least of {repeats}", file=out)
        print("\n".join(lines), file=out, flush=True)
    if args.json:
        doc = {
            "quick": args.quick,
            "repeats": repeats,
            "plan": plan,
            "seed": args.seed,
            "python": sys.version,
            "cpus": os.cpu_count(),
            "loadavg": os.getloadavg(),
            "yotonnet_path": base_opts["yotonnet_path"],
            # JSON keys are strings: sizes become "25", "50", "100".
            "results": results,
            "bars": bars,
        }
        json.dump(doc, sys.stdout, indent=1)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
