"""Leaf benchmark: what a leaf context costs the mesh, in memory and over real processes.

Run ``.venv/bin/python benchmarks/bench_leaves.py`` (``make bench-leaves``). It measures

* **join cost in memory**: a ``yotonnet.testing.MemoryMesh`` ring of 10 nodes,
  each listening on ``memory:NAME``; leaves (contexts that only dial) join
  one at a time, round robin over the nodes, each opening one ``SubChannel``
  on one of 10 shared channel names, and the mesh is settled after each
  join. When the mesh holds 100, 1,000 and 5,000 leaves (``--sizes``; 10,000
  takes about 6 minutes on a 2-CPU VM, so it is not the default), the
  next 50 joins (``--window``) are measured: CONTROL frames sent by all
  contexts (``counters["control_out"]`` deltas), bytes moved on all
  connections, and CPU seconds (``time.process_time``), per join. The ratio
  largest/smallest size is printed for frames and CPU against the issue's
  bar (within 1.5x: flat). Beside it the variant where each leaf subscribes
  to a channel of its own (``--own-sizes``): its hub's record then carries
  one entry per channel, so the record each join re-floods grows with the
  hub's leaves, and so does its cost (frames stay flat, bytes and CPU do
  not; that is by design, not a regression). The table also shows what
  every node holds: routing records (flat at 10) and identity bindings
  (``Guard.idents``, one per leaf of the whole mesh).

  ``MemoryMesh`` keeps its clock's timers in order as they are added
  (``yotonnet.testing.SortedClock``): Twisted's ``task.Clock`` re-sorts every
  pending timer on each ``callLater`` and ``advance``, which at 1,000 leaves
  (3,000 timers) cost more than the join itself. Each join also pays a
  constant harness cost:
  Twisted finds the ``memory:`` endpoint parser by scanning its plugins,
  reading the dropin cache from disk on each ``connect`` (``tcp:`` needs
  none); it is measured on its own and subtracted in the last CPU column.

* **idle leaf memory**: with ``tracemalloc``, the bytes allocated per extra
  idle leaf (no channel) attached to one node of the same ring (stock
  ``MemoryMesh``): the leaf ``Context`` objects are created before the
  first snapshot, so the figure is what ``connect`` and the join allocate
  on both ends (the leaf's link, dialer and view as well as the hub's link
  and leaf entry) plus every node's identity binding for it, i.e. an upper
  bound on what the hub pays. Then the hub alone: a node process
  (leaves_peers.py ``hub``) tracing its own allocations while another
  process attaches idle leaves over TCP: bytes per leaf on the hub only,
  against the issue's bar (under 16 KiB).

* **fan-out over real processes**: three ``yotonnet node`` processes in a
  triangle on loopback TCP; one process holding 1,000 leaf contexts
  (``--leaves``) spread over the three, each subscribed (BINARY) to channel
  ``fan``; one publisher leaf in a process of its own, dialling the first
  node, sending M (``--messages``, default 10,000: 1.4 MiB of frames, past the
  1 MiB flow window these figures were first taken with; within the 4 MiB
  default since issue 17) 100-byte messages, paced by the channel's flow control
  (bench_peers.py's ``Pump``, paused while the channel is not writable).
  Rate = messages delivered in total (leaves x M) / (last delivery - first
  send), on the host's monotonic clock. Beside it, in the
  same run, the baseline: raw Twisted, one server process writing the same M
  length-prefixed messages to each of 1,000 TCP connections held by a client
  process that counts them (``Int32StringReceiver``, one backpressure-paced
  pump per connection). Printed: both rates, the ratio yotonnet/raw, the CPU
  seconds of every process, and the RSS the node processes grew by per leaf
  they hold.

The exit status is 0 whether bars pass or miss, 1 if a run crashed.

Options: ``--quick`` (small sizes for a smoke run), ``--json`` (a JSON
document on stdout; the tables go to stderr), ``--only`` (``joins``,
``memory``, ``fan``), ``--sizes``, ``--own-sizes`` (comma
lists; empty to skip), ``--window``, ``--leaves``, ``--messages``,
``--repeats`` (fan-out runs per side, interleaved, best kept), ``--seed``,
``--yotonnet-path DIR`` (benchmark another copy of the package),
``--profile N`` (after the timed joins at the largest shared size, profile
as many more and print the N functions with the most own time).
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
import tracemalloc
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_core import ROOT, RunError, log  # noqa: E402

LEAVES_PEERS = os.path.join(HERE, "leaves_peers.py")

FULL = {
    "sizes": (100, 1000, 5000),
    "own_sizes": (100, 1000),
    "window": 50,
    "memory_leaves": 500,
    "hub_leaves": 500,
    "leaves": 1000,
    # 10,000 frames of 144 B are 1.4 MiB (past the 1 MiB window of the first figures).
    "messages": 10_000,
}
QUICK = {
    "sizes": (100, 300),
    "own_sizes": (100, 300),
    "window": 20,
    "memory_leaves": 200,
    "hub_leaves": 200,
    "leaves": 200,
    "messages": 200,
}
METRICS = ("joins", "memory", "fan")
NODES = 10
CHANNELS = 10
#: leaves attached before the memory is measured, so that one-time structures exist
WARM_LEAVES = 50
SIZE = 100
BAR_FLAT = 1.5
BAR_IDLE_BYTES = 16 * 1024
#: seconds a process part may take before it counts as crashed
PROC_TIMEOUT = 300.0


def ring(mesh_class, seed: int) -> tuple[Any, list]:
    """A ring of NODES nodes, each listening on memory:NAME, settled."""
    mesh = mesh_class(names=[f"n{i}" for i in range(NODES)], seed=seed)
    nodes = list(mesh)
    for i, node in enumerate(nodes):
        node.listen(f"memory:{node.name}")
        mesh.link(node, nodes[(i + 1) % NODES], settle=False)
    mesh.settle()
    return mesh, nodes


def control_frames(mesh) -> int:
    return sum(ctx.counters["control_out"] for ctx in mesh)


def bytes_moved(mesh) -> int:
    return sum(conn.bytes_moved for conn in mesh.connections)


# --- join cost in memory


def measure_joins(sizes: tuple[int, ...], window: int, own: bool, seed: int,
                  profile: int = 0) -> list[dict]:
    """Grow a ring's leaves to each size and measure the next ``window`` joins."""
    from yotonnet import SubChannel
    from yotonnet.core.routing import SUB
    from yotonnet.testing import MemoryMesh

    mesh, nodes = ring(MemoryMesh, seed)
    joined = 0
    first_sub: list = []

    def join() -> None:
        nonlocal joined
        leaf = mesh.add(f"leaf{joined}")
        leaf.connect(f"memory:{nodes[joined % NODES].name}")
        sub = SubChannel(leaf, f"own{joined}" if own else f"room{joined % CHANNELS}")
        if not first_sub:
            first_sub.append(sub)
        joined += 1
        mesh.settle()

    rows = []
    t_start = time.perf_counter()
    for size in sizes:
        while joined < size:
            join()
        gc.collect()
        frames0, bytes0 = control_frames(mesh), bytes_moved(mesh)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(window):
            join()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        frames, moved = control_frames(mesh) - frames0, bytes_moved(mesh) - bytes0
        # Every leaf is a leaf, counted by its hub, and no node holds more than the ring.
        leaf = mesh[f"leaf{joined - 1}"]
        if leaf.role != "leaf" or leaf.hub is None:
            raise RunError(f"leaf{joined - 1} is {leaf.role!r}, hub {leaf.hub!r}")
        attached = sum(len(n.leaf_links) for n in nodes)
        if attached != joined:
            raise RunError(f"{attached} leaves attached to the nodes, {joined} joined")
        # What a far node counts of the first leaf's channel: every subscriber of it.
        expected = 1 if own else len(range(0, joined, CHANNELS))
        counted = nodes[NODES // 2].interest_count(first_sub[0].channel_id, SUB)
        if counted != expected:
            raise RunError(f"node n{NODES // 2} counts {counted} subscribers of "
                           f"{first_sub[0].name}, not {expected}")
        row = {
            "leaves": size,
            "frames": frames / window,
            "bytes": moved / window,
            "cpu": cpu / window,
            "wall": wall / window,
            "records": max(len(n.routing.nodes) for n in nodes),
            "idents": max(len(n.guard.idents) for n in nodes),
            "hub_entries": max(len(n.routing.local.interests) for n in nodes),
            "elapsed": time.perf_counter() - t_start,
        }
        if profile and size == max(sizes):
            # Another window, under the profiler (it would inflate the timed one).
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(window):
                join()
            profiler.disable()
            row["profile"] = profiler
        rows.append(row)
        log(f"  {'own' if own else 'shared'} channels: {size:>6,} leaves  "
            f"{row['frames']:5.1f} frames/join  "
            f"{row['bytes']:8,.0f} B/join  {row['cpu'] * 1e3:7.2f} ms CPU/join  "
            f"(built in {row['elapsed']:.0f} s)")
    # Closing thousands of leaves costs more than building them; the mesh holds no
    # socket and no thread, so it is simply dropped (collected by the caller).
    return rows


def endpoint_lookup_cost(seed: int, repeats: int = 50) -> float:
    """CPU seconds Twisted takes to turn "memory:n0" into an endpoint (the plugin scan
    each ``Context.connect`` of a leaf does in memory; ``tcp:`` needs none)."""
    from twisted.internet.endpoints import clientFromString

    from yotonnet.testing import MemoryMesh

    mesh = MemoryMesh(names=["n0"], seed=seed)
    clientFromString(mesh.clock, "memory:n0")
    cpu0 = time.process_time()
    for _ in range(repeats):
        clientFromString(mesh.clock, "memory:n0")
    cost = (time.process_time() - cpu0) / repeats
    mesh.close()
    return cost


def measure_all_joins(plan: dict, seed: int, profile: int) -> dict:
    out: dict = {"window": plan["window"], "lookup": endpoint_lookup_cost(seed)}
    out["shared"] = measure_joins(plan["sizes"], plan["window"], False, seed, profile)
    gc.collect()
    if plan["own_sizes"]:
        out["own"] = measure_joins(plan["own_sizes"], plan["window"], True, seed)
        gc.collect()
        gc.collect()
    return out


def joins_table(results: dict) -> tuple[list[str], dict]:
    lookup = results["lookup"]
    head = (f"{'channels':<16} {'leaves':>7} {'frames/join':>11} {'bytes/join':>10} "
            f"{'CPU ms/join':>11} {'records/node':>12} {'idents/node':>11} "
            f"{'hub entries':>11} {'CPU-lookup ms':>13}")
    rows = [head, "-" * len(head)]
    labels = {"shared": "10 shared", "own": "own (1/leaf)"}
    for key in ("shared", "own"):
        for r in results.get(key, ()):
            rows.append(
                f"{labels[key]:<16} {r['leaves']:>7,} {r['frames']:>11.1f} {r['bytes']:>10,.0f} "
                f"{r['cpu'] * 1e3:>11.2f} {r['records']:>12} {r['idents']:>11,} "
                f"{r['hub_entries']:>11,} {(r['cpu'] - lookup) * 1e3:>13.2f}"
            )
    rows.append("")
    rows.append(f"harness: Twisted's lookup of the memory: endpoint plugin, "
                f"{lookup * 1e3:.2f} ms CPU per connect (constant; in CPU ms/join)")
    bars: dict = {}
    for key in ("shared", "own"):
        runs = results.get(key)
        if not runs or len(runs) < 2:
            continue
        small, large = runs[0], runs[-1]
        name = f"{large['leaves']:,}/{small['leaves']:,}"
        for what, a, b in (
            ("frames", small["frames"], large["frames"]),
            ("bytes", small["bytes"], large["bytes"]),
            ("CPU", small["cpu"], large["cpu"]),
            ("CPU less the lookup", small["cpu"] - lookup, large["cpu"] - lookup),
        ):
            ratio = b / a if a > 0 else float("inf")
            line = f"{labels[key]:<13} ratio {name} {what:<20} {ratio:7.2f}"
            if key == "shared" and what in ("frames", "CPU"):
                ok = ratio <= BAR_FLAT
                bars[f"join {what} {name} <= {BAR_FLAT}x (shared channels)"] = {
                    "ratio": ratio, "pass": ok}
                line += f"  bar <= {BAR_FLAT}: {'PASS' if ok else 'MISS'}"
            rows.append(line)
    return rows, bars


# --- idle leaf memory in memory


def measure_idle_memory(count: int, seed: int) -> dict:
    """Bytes traced per idle leaf attached to n0 of a ring (see the module doc)."""
    from yotonnet.testing import MemoryMesh

    mesh, nodes = ring(MemoryMesh, seed)
    hub = nodes[0]
    for i in range(WARM_LEAVES):
        mesh.add(f"warm{i}").connect("memory:n0")
    mesh.settle()
    idents0 = sum(len(n.guard.idents) for n in nodes)
    tracemalloc.start(1)
    try:
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        leaves = [mesh.add(f"idle{i}") for i in range(count)]
        gc.collect()
        made = tracemalloc.get_traced_memory()[0]
        before = tracemalloc.take_snapshot()
        for leaf in leaves:
            leaf.connect("memory:n0")
        mesh.settle()
        gc.collect()
        attached = tracemalloc.get_traced_memory()[0]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    if len(hub.leaf_links) != WARM_LEAVES + count:
        raise RunError(f"{len(hub.leaf_links)} leaves on n0, {WARM_LEAVES + count} dialled")
    by_file = []
    for stat in after.compare_to(before, "filename")[:8]:
        frame = stat.traceback[0]
        by_file.append([os.path.relpath(frame.filename, ROOT)
                        if frame.filename.startswith(ROOT) else frame.filename,
                        stat.size_diff / count])
    result = {
        "leaves": count,
        "context": (made - base) / count,
        "attach": (attached - made) / count,
        "idents": (sum(len(n.guard.idents) for n in nodes) - idents0) / count,
        "by_file": by_file,
    }
    log(f"  {count} idle leaves on one node: {result['attach']:,.0f} B per leaf attached "
        f"(+{result['context']:,.0f} B per Context object)")
    mesh.close()
    return result


# --- real processes


class Proc:
    """A child process; its stdout (and stderr) lines are collected by a thread."""

    def __init__(self, name: str, args: list[str], env: dict | None = None,
                 commands: bool = True) -> None:
        self.name = name
        #: whether it reads commands (``quit``) on stdin, as leaves_peers.py roles do
        self.commands = commands
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=env, cwd=ROOT,
        )
        self.pid = self.proc.pid
        self.lines: collections.deque[str] = collections.deque()
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        self.cond = threading.Condition()
        self.ended = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line)
                self.tail.append(line)
                self.cond.notify_all()
        with self.cond:
            self.ended = True
            self.cond.notify_all()

    def expect(self, pattern: str, deadline: float) -> re.Match:
        """The first match of ``pattern`` in a line from now on."""
        regex = re.compile(pattern)
        with self.cond:
            while True:
                while self.lines:
                    match = regex.search(self.lines.popleft())
                    if match:
                        return match
                if self.ended:
                    self.proc.wait()
                    raise RunError(f"{self.name} exited ({self.proc.returncode}) before "
                                   f"{pattern!r}:\n" + "".join(self.tail))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RunError(f"{self.name}: no {pattern!r} in time:\n"
                                   + "".join(list(self.tail)[-10:]))
                self.cond.wait(left)

    def tagged(self, tag: str, deadline: float) -> dict:
        value = json.loads(self.expect(rf"^{tag} (.*)$", deadline).group(1))
        if isinstance(value, dict) and "error" in value:
            raise RunError(f"{self.name}: {value['error']}\n{value.get('traceback', '')}")
        return value

    def send(self, line: str) -> None:
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    def stop(self, timeout: float = 10.0) -> None:
        """Ask (``quit``, or SIGTERM), then kill: this child, by its handle."""
        if self.commands and self.proc.poll() is None:
            self.send("quit")
            try:
                self.proc.wait(timeout=min(timeout, 3.0))
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass

    def cpu(self) -> float:
        """CPU seconds (user + system) the process has used so far."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0


def peer(role: str, opts: dict) -> Proc:
    return Proc(role, [sys.executable, LEAVES_PEERS, role, json.dumps(opts)])


def child_env(yotonnet_path: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [yotonnet_path, env.get("PYTHONPATH")]))
    return env


def start_nodes(count: int, base_opts: dict, deadline: float, procs: list[Proc]) -> list[int]:
    """``count`` yotonnet node processes, each linked to every one before it (a
    triangle for 3); their ports."""
    ports: list[int] = []
    env = child_env(base_opts["yotonnet_path"])
    for i in range(count):
        args = [sys.executable, "-m", "yotonnet", "node", "--name", f"fan{i}",
                "--listen", "tcp:0:interface=127.0.0.1"]
        for port in ports:
            args += ["--peer", f"tcp:127.0.0.1:{port}"]
        node = Proc(f"node fan{i}", args, env=env, commands=False)
        procs.append(node)
        ports.append(int(node.expect(r"ready on 127\.0\.0\.1:(\d+)", deadline).group(1)))
    # Each node logs a link up to each of the others (in any order) before the leaves come.
    for i, node in enumerate(procs[-count:]):
        missing = {f"fan{j}" for j in range(count) if j != i}
        while missing:
            missing.discard(node.expect(r"link up to (fan\d+)@", deadline).group(1))
    return ports


def run_fan(leaves: int, messages: int, base_opts: dict) -> dict:
    deadline = time.monotonic() + PROC_TIMEOUT
    procs: list[Proc] = []
    try:
        ports = start_nodes(3, base_opts, deadline, procs)
        nodes = list(procs)
        time.sleep(0.5)
        rss0 = [n.rss() for n in nodes]
        batch = max(1, min(1000, 1024 * 1024 // SIZE))
        sub = peer("leaves", {**base_opts, "ports": ports, "count": leaves,
                              "messages": messages, "channel": "fan"})
        procs.append(sub)
        joined = sub.tagged("READY", deadline)
        time.sleep(1.0)  # let the nodes finish with the joins before reading their RSS
        rss1 = [n.rss() for n in nodes]
        pub = peer("pub", {**base_opts, "port": ports[0], "subscribers": leaves,
                           "messages": messages, "size": SIZE, "batch": batch,
                           "channel": "fan"})
        procs.append(pub)
        seen = pub.tagged("SUBSCRIBED", deadline)
        cpu0 = [n.cpu() for n in nodes]
        got = sub.tagged("RESULT", deadline)
        cpu1 = [n.cpu() for n in nodes]
        sent = pub.tagged("RESULT", deadline)
        if got["fewest"] != messages or got["most"] != messages:
            raise RunError(f"leaves got {got['fewest']} to {got['most']} of {messages}")
        seconds = got["last"] - sent["first"]
        per_node = [(leaves + 2 - i) // 3 for i in range(3)]  # leaves i, i+3, ... on node i
        return {
            "leaves": leaves,
            "messages": messages,
            "delivered": got["delivered"],
            "seconds": seconds,
            "rate": got["delivered"] / seconds,
            "join_seconds": joined["seconds"],
            "subscribed_seconds": seen["seconds"],
            "cpu": {"publisher": sent["send_cpu"], "leaves": got["cpu"],
                    **{f"node{i}": cpu1[i] - cpu0[i] for i in range(3)}},
            "rss_per_leaf": [(rss1[i] - rss0[i]) / per_node[i] for i in range(3)],
            "pauses": sent["pauses"],
        }
    finally:
        for proc in reversed(procs):
            proc.stop()


def run_raw(connections: int, messages: int, base_opts: dict) -> dict:
    deadline = time.monotonic() + PROC_TIMEOUT
    procs: list[Proc] = []
    try:
        server = peer("raw-server", {**base_opts, "connections": connections,
                                     "messages": messages, "size": SIZE, "batch": 100})
        procs.append(server)
        port = int(server.expect(r"^PORT (\d+)", deadline).group(1))
        clients = peer("raw-clients", {**base_opts, "port": port, "connections": connections,
                                       "messages": messages})
        procs.append(clients)
        joined = clients.tagged("READY", deadline)
        got = clients.tagged("RESULT", deadline)
        sent = server.tagged("RESULT", deadline)
        if got["fewest"] != messages or got["most"] != messages:
            raise RunError(f"connections got {got['fewest']} to {got['most']} of {messages}")
        seconds = got["last"] - sent["first"]
        return {
            "connections": connections,
            "messages": messages,
            "delivered": got["delivered"],
            "seconds": seconds,
            "rate": got["delivered"] / seconds,
            "join_seconds": joined["seconds"],
            "cpu": {"server": sent["send_cpu"], "clients": got["cpu"]},
        }
    finally:
        for proc in reversed(procs):
            proc.stop()


def measure_fan(plan: dict, repeats: int, base_opts: dict) -> dict:
    raw: dict[str, list[dict]] = {"yotonnet": [], "raw": []}
    for rep in range(repeats):
        sides = ("yotonnet", "raw") if rep % 2 == 0 else ("raw", "yotonnet")
        for side in sides:
            if side == "yotonnet":
                r = run_fan(plan["leaves"], plan["messages"], base_opts)
            else:
                r = run_raw(plan["leaves"], plan["messages"], base_opts)
            raw[side].append(r)
            cpu = ", ".join(f"{k} {v:.2f}" for k, v in r["cpu"].items())
            log(f"  run {rep + 1}/{repeats} {side:<8} {r['rate']:12,.0f} msg/s delivered "
                f"({r['delivered']:,} in {r['seconds']:.2f} s; CPU s: {cpu})")
    return {side: {**max(runs, key=lambda r: r["rate"]), "rates": [r["rate"] for r in runs]}
            for side, runs in raw.items()}


def measure_hub_memory(count: int, base_opts: dict) -> dict:
    """Bytes a node process traces per idle leaf attached to it over TCP."""
    deadline = time.monotonic() + PROC_TIMEOUT
    procs: list[Proc] = []
    try:
        hub = peer("hub", base_opts)
        procs.append(hub)
        port = int(hub.expect(r"^PORT (\d+)", deadline).group(1))
        leaves = peer("leaves", {**base_opts, "ports": [port], "count": WARM_LEAVES,
                                 "idle": True})
        procs.append(leaves)
        leaves.tagged("READY", deadline)
        hub.send(f"measure {WARM_LEAVES}")
        before = hub.tagged("MEM", deadline)
        leaves.send(f"more {count}")
        leaves.tagged("READY", deadline)
        hub.send(f"measure {WARM_LEAVES + count}")
        after = hub.tagged("MEM", deadline)
        if after["leaves"] != WARM_LEAVES + count:
            raise RunError(f"the hub holds {after['leaves']} leaves, not {WARM_LEAVES + count}")
        result = {
            "leaves": count,
            "traced": (after["traced"] - before["traced"]) / count,
            "rss": (after["rss"] - before["rss"]) / count,
        }
        log(f"  hub process, {count} idle TCP leaves: {result['traced']:,.0f} B traced per "
            f"leaf, RSS {result['rss']:,.0f} B per leaf")
        return result
    finally:
        for proc in reversed(procs):
            proc.stop()


def memory_table(results: dict) -> tuple[list[str], dict]:
    rows = []
    bars: dict = {}
    mem = results.get("in_memory")
    if mem:
        rows.append(f"in memory, {mem['leaves']} idle leaves attached to one node of a ring of "
                    f"{NODES} (after {WARM_LEAVES}):")
        rows.append(f"  allocated per leaf by connect + join, both ends and every node "
                    f"{mem['attach']:>9,.0f} B")
        rows.append(f"  (the leaf's Context object itself, created before, not included "
                    f"{mem['context']:>7,.0f} B)")
        rows.append(f"  identity bindings added per leaf, over the {NODES} nodes "
                    f"{mem['idents']:>22.1f}")
        rows.append("  where the bytes were allocated (per leaf; yotonnet/testing.py is the test "
                    "double's transports):")
        for name, size in mem["by_file"]:
            rows.append(f"    {name:<58} {size:>9,.0f} B")
    hub = results.get("hub")
    if hub:
        ok = hub["traced"] < BAR_IDLE_BYTES
        bars[f"idle leaf costs its hub < {BAR_IDLE_BYTES // 1024} KiB"] = {
            "bytes": hub["traced"], "pass": ok}
        rows.append(f"hub process (a node alone), {hub['leaves']} idle leaves over TCP from "
                    "another process:")
        rows.append(f"  traced by the hub per leaf {hub['traced']:>9,.0f} B  "
                    f"bar < {BAR_IDLE_BYTES:,} B: {'PASS' if ok else 'MISS'}")
        rows.append(f"  RSS growth per leaf        {hub['rss']:>9,.0f} B  "
                    "(tracemalloc's own records included)")
    return rows, bars


def fan_table(results: dict) -> list[str]:
    yot, raw = results["yotonnet"], results["raw"]
    ratio = yot["rate"] / raw["rate"]
    head = f"{'metric':<44} {'yotonnet':>12} {'raw':>12} {'ratio':>7}"
    rows = [head, "-" * len(head)]
    rows.append(f"{'delivered msg/s (sum over subscribers)':<44} {yot['rate']:>12,.0f} "
                f"{raw['rate']:>12,.0f} {ratio:>7.2f}")
    rows.append(f"{'seconds, first send to last delivery':<44} {yot['seconds']:>12.2f} "
                f"{raw['seconds']:>12.2f}")
    rows.append(f"{'seconds to link the subscribers':<44} {yot['join_seconds']:>12.2f} "
                f"{raw['join_seconds']:>12.2f}")
    rows.append(f"{'CPU s, sender (publisher / raw server)':<44} {yot['cpu']['publisher']:>12.2f} "
                f"{raw['cpu']['server']:>12.2f}")
    rows.append(f"{'CPU s, receiving process':<44} {yot['cpu']['leaves']:>12.2f} "
                f"{raw['cpu']['clients']:>12.2f}")
    nodes = [yot["cpu"][f"node{i}"] for i in range(3)]
    rows.append(f"{'CPU s, node processes fan0 fan1 fan2':<44} "
                f"{' / '.join(f'{c:.2f}' for c in nodes):>12}")
    rows.append(f"{'node RSS growth per leaf held (B)':<44} "
                f"{' / '.join(f'{b:,.0f}' for b in yot['rss_per_leaf']):>12}")
    rows.append(f"publisher paused by flow control {yot['pauses']:,} times; "
                f"rates of the runs: yotonnet {', '.join(f'{r:,.0f}' for r in yot['rates'])}; "
                f"raw {', '.join(f'{r:,.0f}' for r in raw['rates'])}")
    return rows


# --- main


def sizes(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    if text is None:
        return default
    return tuple(int(x) for x in text.split(",") if x.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--json", action="store_true", help="JSON on stdout, tables on stderr")
    parser.add_argument("--only", default=",".join(METRICS),
                        help=f"comma-separated subset of {','.join(METRICS)}")
    parser.add_argument("--sizes", help="leaves at which joins are measured (default "
                        f"{','.join(map(str, FULL['sizes']))})")
    parser.add_argument("--own-sizes", help="the same with a channel per leaf (default "
                        f"{','.join(map(str, FULL['own_sizes']))})")
    parser.add_argument("--window", type=int, help="joins measured at each size (default 50)")
    parser.add_argument("--leaves", type=int, help="subscribers of the fan-out (default 1000)")
    parser.add_argument("--messages", type=int, help="messages M of the fan-out (default 10000)")
    parser.add_argument("--repeats", type=int, default=1, help="fan-out runs per side")
    parser.add_argument("--seed", type=int, default=1, help="seed of the in-memory meshes")
    parser.add_argument("--yotonnet-path", default=ROOT,
                        help="directory holding the yotonnet package (default: this repo)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="profile the joins at the largest shared size; print N functions")
    args = parser.parse_args(argv)

    plan = dict(QUICK if args.quick else FULL)
    plan["sizes"] = sizes(args.sizes, plan["sizes"])
    plan["own_sizes"] = sizes(args.own_sizes, plan["own_sizes"])
    for key in ("window", "leaves", "messages"):
        if getattr(args, key) is not None:
            plan[key] = getattr(args, key)
    metrics = [m for m in args.only.split(",") if m]
    unknown = set(metrics) - set(METRICS)
    if unknown:
        parser.error(f"unknown metric(s) {sorted(unknown)}; choose from {METRICS}")
    if "joins" in metrics and not plan["sizes"]:
        parser.error("--sizes needs at least one size")
    base_opts = {"yotonnet_path": os.path.abspath(args.yotonnet_path)}
    sys.path.insert(0, base_opts["yotonnet_path"])
    import yotonnet

    base_opts["yotonnet_path"] = os.path.dirname(os.path.dirname(yotonnet.__file__))
    # The children inherit it: 1,000 leaves hold 1,000 sockets in one process.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * plan["leaves"] + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE,
                           (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))
    log(f"yotonnet from {base_opts['yotonnet_path']}; python {sys.version.split()[0]}; "
        f"{os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}; open files "
        f"{resource.getrlimit(resource.RLIMIT_NOFILE)[0]}")

    results: dict = {}
    t0 = time.perf_counter()
    try:
        if "joins" in metrics:
            results["joins"] = measure_all_joins(plan, args.seed, args.profile)
        if "memory" in metrics:
            results["memory"] = {
                "in_memory": measure_idle_memory(plan["memory_leaves"], args.seed),
                "hub": measure_hub_memory(plan["hub_leaves"], base_opts),
            }
        if "fan" in metrics:
            results["fan"] = measure_fan(plan, args.repeats, base_opts)
    except RunError as e:
        log(f"benchmark run failed: {e}")
        return 1

    out = sys.stderr if args.json else sys.stdout
    bars: dict = {}
    if "joins" in results:
        lines, more = joins_table(results["joins"])
        bars.update(more)
        print(f"\njoin cost in memory: ring of {NODES} nodes, leaves joining round robin with "
              f"one SubChannel each; {results['joins']['window']} joins measured at each size "
              f"(seed {args.seed})", file=out)
        print("\n".join(lines), file=out, flush=True)
        for r in results["joins"]["shared"]:
            profiler = r.pop("profile", None)
            if profiler is not None:
                import pstats

                print(f"\nprofile of {results['joins']['window']} more joins after those at "
                      f"{r['leaves']:,} leaves (top {args.profile} by own time):", file=out)
                pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(
                    args.profile)
    if "memory" in results:
        lines, more = memory_table(results["memory"])
        bars.update(more)
        print("\nmemory of an idle leaf (tracemalloc)", file=out)
        print("\n".join(lines), file=out, flush=True)
    if "fan" in results:
        fan = results["fan"]
        print(f"\nfan-out over real processes: 3 yotonnet node processes (triangle), "
              f"{plan['leaves']:,} leaves in one process, {plan['messages']:,} messages of "
              f"{SIZE} B; raw: 1 server, {plan['leaves']:,} connections; "
              f"best of {args.repeats} run(s) per side", file=out)
        print("\n".join(fan_table(fan)), file=out, flush=True)
    log(f"\n(total {time.perf_counter() - t0:.0f} s)")
    if args.json:
        doc = {
            "quick": args.quick,
            "plan": plan,
            "seed": args.seed,
            "python": sys.version,
            "cpus": os.cpu_count(),
            "loadavg": os.getloadavg(),
            "yotonnet_path": base_opts["yotonnet_path"],
            "results": results,
            "bars": bars,
        }
        json.dump(doc, sys.stdout, indent=1, default=str)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
