"""Side by side: yotonnet against raw Twisted, pyzmq, NATS and Yoton 2.2, in one run.

Run ``.venv/bin/python benchmarks/bench_versus.py`` (``make bench-peers``, options through
``ARGS=``, which first installs the bench-only peers: the ``bench`` extra of pyproject.toml,
pyzmq and nats-py, when missing, and Debian's ``nats-server`` when root and missing). Not
part of ``make test``. Every system runs in separate
processes on loopback, with its own idiomatic fast path:

* **yotonnet**: a ``PubChannel`` (BINARY) driven by a streaming producer (bench_peers.py's
  ``Pump``: a batch of ``send`` calls per reactor turn, paused while the channel is not
  writable), to the default lossless ``SubChannel.subscribe`` callback; ``ReqChannel``
  to a ``RepChannel`` echo;
* **raw Twisted**: ``Int32StringReceiver``, one ``sendString`` per message, the same
  ``Pump`` paced by the transport; and **pre-joined**, the frames joined beforehand and
  written ``k`` at a time (what a receiver can take when sending costs nothing: the
  receive-side ceiling); for req/rep also **eager send**, each frame written to the socket
  at once as yotonnet's links do (``ContextConfig.eager_writes``): the floor under any
  messaging layer on Twisted's reactor that sleeps while it waits; and for req/rep
  **yotonnet with** ``reply_poll = 0``: without the poll for a call's reply before the
  reactor sleeps (yotonnet.mesh.replypoll), the layer's own cost against that floor;
* **pyzmq**: PUB/SUB with ``SNDHWM``/``RCVHWM`` 0 (never drops), the publisher sending
  hellos until every subscriber has answered before it starts; REQ/REP;
* **NATS**: Debian's ``nats-server`` (one per run, ``max_pending`` 1 GiB), nats-py
  clients, subscribers with pending limits off; the server is the forwarder in every
  NATS figure (publisher -> server -> subscriber);
* **Yoton 2.2** (inside pyzo): the seed's own reference.

Metrics (each run a fresh set of processes; rounds interleave the systems, 3 rounds by
default, and every figure is the median of the rounds with the spread min-max; req/rep,
whose runs are short and move most with the machine's moment, runs three passes a round,
each interleaving every system, and its figures are medians of all the passes; the chain
runs two passes a round, each a pair of runs, see below):

* pub/sub throughput of 100 B and 64 KiB messages, timed at the receiver from its first
  message to its last;
* req/rep round trip, 100 B: median and p99 of sequential calls after a warm-up, and the
  CPU instructions of one round trip (caller and replier processes under
  ``valgrind --tool=callgrind``, counting only the timed calls; ``perf stat`` has no
  hardware counters on these VMs; nats-server, a Go binary, does not run under valgrind,
  so the NATS count is of its two clients only);
* fan-out: one publisher, 10 subscriber processes, 100 B, aggregate messages delivered
  per second (every subscriber must get every message);
* chain: 100 B through one forwarding process, against the same system's direct pub/sub
  run right before or after it (two such pairs a round, the chain first in the second;
  the ratio is the median of the pairs' ratios): yotonnet publisher node -> forwarding
  node -> subscriber node, pyzmq through an XSUB/XPUB ``zmq.proxy``, Yoton through a
  middle context (it floods).

Below each figure the CPU time per message of each process (user + system, all threads,
over the process's own window: a publisher from its first send until every receiver has
everything, a receiver from its first message to its last, a forwarder or server between
the start and the end of the run): the process near 100% busy is the bottleneck.

The goals of issue 17 are printed as PASS/MISS beside the figures: pub/sub 100 B >= 1.2x
pyzmq, 64 KiB >= 1.0x pyzmq, fan-out to 10 >= 1.0x pyzmq, the yotonnet chain >= 0.9x
yotonnet direct, req/rep median <= pyzmq's and p99 <= 1.2x pyzmq's. The exit status is 0
whether goals pass or miss, 1 if a run crashed (a system that is not installed is
skipped, with the reason in its rows).

Options: ``--quick`` (short runs, 1 round), ``--repeats N`` (rounds), ``--json`` (a JSON
document on stdout; the tables go to stderr), ``--only`` (metrics), ``--systems``,
``--no-instr`` (skip the callgrind counts), ``--yotonnet-path DIR``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_core import ROOT, RunError, log  # noqa: E402
from bench_leaves import Proc  # noqa: E402

SCRIPTS = {
    "twisted": os.path.join(HERE, "versus_twisted.py"),
    "zmq": os.path.join(HERE, "versus_zmq.py"),
    "nats": os.path.join(HERE, "versus_nats.py"),
    "yoton": os.path.join(HERE, "versus_yoton.py"),
}
HOST = "127.0.0.1"
SMALL, LARGE = 100, 64 * 1024
#: bytes a Twisted sender writes per reactor turn (at most 1000 messages), as bench_core
BATCH_BYTES = 1024 * 1024
FANOUT = 10
RUN_TIMEOUT = 240.0
INSTR_TIMEOUT = 900.0

SYSTEMS = ("yotonnet", "nopoll", "raw", "joined", "eager", "pyzmq", "nats", "yoton")
#: the systems of the throughput metrics (eager send and yotonnet without its reply poll
#: are req/rep rows)
STREAMING = tuple(s for s in SYSTEMS if s not in ("eager", "nopoll"))
LABELS = {
    "yotonnet": "yotonnet",
    "nopoll": "yotonnet, reply_poll = 0",
    "raw": "raw Twisted, sendString",
    "joined": "raw Twisted, pre-joined",
    "eager": "raw Twisted, eager send",
    "pyzmq": "pyzmq",
    "nats": "NATS (nats-py)",
    "yoton": "Yoton 2.2",
}
METRICS = ("pubsub-100", "chain", "pubsub-64k", "fanout", "reqrep")
#: passes of a metric within each round, every system in each (rotated): a req/rep pass is
#: a few thousand calls, under a second, and its median moves most with the moment; a
#: chain pass is a pair, the chain and a direct run beside it (see one())
PASSES = {"reqrep": 3, "chain": 2}
#: which systems each metric has (the rest print why not)
APPLIES = {
    "pubsub-100": STREAMING,
    "pubsub-64k": STREAMING,
    "reqrep": ("yotonnet", "nopoll", "raw", "eager", "pyzmq", "nats", "yoton"),
    "fanout": STREAMING,
    "chain": ("yotonnet", "pyzmq", "yoton"),
}
NOT_APPLICABLE = {
    ("reqrep", "joined"): "n/a (a sender-side ceiling)",
    **{(metric, system): "n/a (req/rep only)"
       for metric in ("pubsub-100", "pubsub-64k", "fanout", "chain")
       for system in ("eager", "nopoll")},
    ("chain", "raw"): "n/a (no forwarding node)",
    ("chain", "joined"): "n/a (no forwarding node)",
    ("chain", "nats"): "n/a: the server is the forwarder in every NATS row",
}

# Sized for about 1-3 s per run on a 2-core VM (yotonnet's 100 B and fan-out runs had
# become 0.3 s long at 500,000 and 100,000, too short for a steady ratio). Yoton moves
# ~10 k messages/s and takes ~176 ms per call, so it gets its own counts (its rates are
# rates all the same).
FULL = {
    "pubsub-100": 1_500_000, "pubsub-64k": 16_000, "calls": 3000, "warmup": 300,
    "fanout": 300_000, "instr_calls": 500,
    "yoton": {"pubsub-100": 20_000, "pubsub-64k": 2_000, "calls": 20, "warmup": 3,
              "fanout": 2_000, "instr_calls": 10},
}
QUICK = {
    "pubsub-100": 100_000, "pubsub-64k": 4_000, "calls": 1000, "warmup": 100,
    "fanout": 20_000, "instr_calls": 200,
    "yoton": {"pubsub-100": 5_000, "pubsub-64k": 800, "calls": 8, "warmup": 2,
              "fanout": 500, "instr_calls": 5},
}

GOAL_100 = 1.2
GOAL_64K = 1.0
GOAL_FANOUT = 1.0
GOAL_CHAIN = 0.9
GOAL_MEDIAN = 1.0
GOAL_P99 = 1.2

NATS_CONF = """\
# bench_versus.py: a lossless-as-possible server for the benchmark
max_pending: 1073741824
write_deadline: "60s"
"""


# --- what is installed


def availability() -> dict[str, str | None]:
    """Why each system cannot run here (None: it can)."""
    why: dict[str, str | None] = dict.fromkeys(SYSTEMS)
    if importlib.util.find_spec("zmq") is None:
        why["pyzmq"] = "skipped: pyzmq is not installed (pip install '.[bench]')"
    if shutil.which("nats-server") is None:
        why["nats"] = ("skipped: no nats-server (apt-get install nats-server, as root; "
                       "`make bench-peers` does)")
    elif importlib.util.find_spec("nats") is None:
        why["nats"] = "skipped: nats-py is not installed (pip install '.[bench]')"
    spec = importlib.util.find_spec("pyzo")
    if spec is None or not any(
        os.path.isdir(os.path.join(p, "yoton")) for p in spec.submodule_search_locations or ()
    ):
        why["yoton"] = "skipped: Yoton 2.2 ships in pyzo (pip install --no-deps pyzo)"
    return why


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name, dist in (("twisted", "twisted"), ("pyzmq", "pyzmq"), ("nats-py", "nats-py"),
                       ("pyzo", "pyzo")):
        try:
            out[name] = version(dist)
        except PackageNotFoundError:
            pass
    try:
        import zmq

        out["libzmq"] = zmq.zmq_version()
    except ImportError:
        pass
    if shutil.which("nats-server"):
        text = subprocess.run(["nats-server", "--version"], capture_output=True, text=True)
        out["nats-server"] = text.stdout.strip().rsplit(" ", 1)[-1]
    return out


# --- processes


class Run:
    """The processes of one measurement; all are ended (by their handles) at the end."""

    def __init__(self, base: dict, instr_dir: str | None = None) -> None:
        self.base = base
        self.instr_dir = instr_dir
        self.procs: list[Proc] = []
        self.deadline = time.monotonic() + (INSTR_TIMEOUT if instr_dir else RUN_TIMEOUT)
        self.counts: dict[str, str] = {}

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout=5.0)

    def start(self, script: str, role: str, opts: dict, name: str | None = None) -> Proc:
        name = name or role
        argv = [sys.executable, SCRIPTS[script], role, json.dumps({**self.base, **opts})]
        if self.instr_dir and opts.get("instr"):
            out = os.path.join(self.instr_dir, f"{name}.out")
            self.counts[name] = out
            argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                    "--zero-before=getloadavg*", "--dump-before=getpriority*", *argv]
        proc = Proc(name, argv, commands=False)
        self.procs.append(proc)
        return proc

    def nats_server(self) -> tuple[Proc, str]:
        conf = os.path.join(tempfile.gettempdir(), f"bench-versus-nats-{os.getpid()}.conf")
        with open(conf, "w") as f:
            f.write(NATS_CONF)
        proc = Proc("nats-server", ["nats-server", "-a", HOST, "-p", "-1", "-c", conf],
                    commands=False)
        self.procs.append(proc)
        try:
            port = proc.expect(r"Listening for client connections on [^:]+:(\d+)",
                               self.deadline).group(1)
        finally:
            os.unlink(conf)  # read at start-up
        return proc, f"nats://{HOST}:{port}"

    def port(self, proc: Proc) -> object:
        return json.loads(proc.expect(r"^PORT (.*)$", self.deadline).group(1))

    def ready(self, proc: Proc) -> None:
        proc.expect(r"^READY$", self.deadline)

    def result(self, proc: Proc) -> dict:
        return proc.tagged("RESULT", self.deadline)

    def instructions(self, name: str) -> int | None:
        """Callgrind's first dump of that process: its measured window."""
        path = self.counts.get(name, "") + ".1"
        if not os.path.exists(path):
            return None
        with open(path) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
        return None


def proc_cpu(proc: Proc) -> float:
    try:
        return proc.cpu()
    except OSError:  # already gone: it had nothing more to do
        return float("nan")


# --- pub/sub, fan-out, chain


def pubsub_run(system: str, size: int, count: int, subscribers: int, chain: bool,
               base: dict) -> dict:
    """One publisher, ``subscribers`` receiver processes, maybe a forwarder between."""
    batch = max(1, min(1000, BATCH_BYTES // size))
    opts = {"size": size, "count": count, "subscribers": subscribers, "batch": batch}
    with Run(base) as run:
        middles: list[Proc] = []
        subs: list[Proc] = []
        if system in ("yotonnet", "raw", "joined"):
            kind = "yot" if system == "yotonnet" else "raw"
            extra = {"joined": True, "k": batch} if system == "joined" else {}
            pub = run.start("twisted", f"{kind}-pub", {**opts, **extra})
            port = run.port(pub)
            if chain:
                middles.append(run.start("twisted", "yot-fwd", {"port": port}))
                port = run.port(middles[0])
            for i in range(subscribers):
                subs.append(run.start("twisted", f"{kind}-sub", {**opts, "port": port},
                                      name=f"{kind}-sub-{i}"))
        elif system == "pyzmq":
            pub_opts = dict(opts)
            if chain:
                middles.append(run.start("zmq", "zmq-proxy", {}))
                ports = run.port(middles[0])
                pub_opts["connect"] = f"tcp://{HOST}:{ports['xsub']}"
            pub = run.start("zmq", "zmq-pub", pub_opts)
            pports = run.port(pub)
            target = ports["xpub"] if chain else pports["pub"]
            for i in range(subscribers):
                subs.append(run.start("zmq", "zmq-sub", {
                    **opts, "connect": f"tcp://{HOST}:{target}", "ready": pports["ready"],
                }, name=f"zmq-sub-{i}"))
        elif system == "nats":
            server, url = run.nats_server()
            middles.append(server)
            for i in range(subscribers):
                subs.append(run.start("nats", "nats-sub", {**opts, "url": url},
                                      name=f"nats-sub-{i}"))
            pub = run.start("nats", "nats-pub", {**opts, "url": url})
        elif system == "yoton":
            pub = run.start("yoton", "yoton-pub", opts)
            ports = run.port(pub)
            if chain:
                middles.append(run.start("yoton", "yoton-fwd", {"port": ports[0]}))
                ports = run.port(middles[0])
            for i in range(subscribers):
                subs.append(run.start("yoton", "yoton-sub", {**opts, "port": ports[i]},
                                      name=f"yoton-sub-{i}"))
        else:
            raise ValueError(system)
        for sub in subs:
            run.ready(sub)
        mid0 = [proc_cpu(m) for m in middles]
        pub.send("go")
        results = [run.result(sub) for sub in subs]
        mid1 = [proc_cpu(m) for m in middles]
        pub.send("done")
        sent = run.result(pub)
    first = min(r["first"] for r in results)
    last = max(r["last"] for r in results)
    delivered = sum(r["messages"] for r in results)
    out = {
        "rate": (delivered - len(results)) / (last - first),
        "seconds": last - first,
        "delivered": delivered,
        "cpu": {
            "publisher": sent["cpu"] / delivered,
            "subscriber": statistics.mean(r["cpu"] / r["messages"] for r in results),
        },
        # CPU busy fraction over the receivers' window: near 100% marks the bottleneck.
        "busy": {
            "publisher": sent["cpu"] / (last - first),
            "subscriber": statistics.mean(r["cpu"] / r["seconds"] for r in results),
        },
    }
    if middles:
        role = "server" if system == "nats" else "forwarder"
        out["cpu"][role] = (mid1[0] - mid0[0]) / delivered
        out["busy"][role] = (mid1[0] - mid0[0]) / (last - first)
    return out


# --- req/rep


def reqrep_run(system: str, calls: int, warmup: int, base: dict,
               instr_dir: str | None = None) -> dict:
    opts = {"size": SMALL, "count": calls, "warmup": warmup, "instr": instr_dir is not None}
    with Run(base, instr_dir) as run:
        server = None
        if system in ("yotonnet", "nopoll", "raw", "eager"):
            kind = "yot" if system in ("yotonnet", "nopoll") else "raw"
            if system == "eager":
                opts["eager"] = True
            if system == "nopoll":
                opts["reply_poll"] = 0
            rep = run.start("twisted", f"{kind}-rep", opts, name="replier")
            req = run.start("twisted", f"{kind}-req", {**opts, "port": run.port(rep)},
                            name="caller")
        elif system == "pyzmq":
            rep = run.start("zmq", "zmq-rep", opts, name="replier")
            req = run.start("zmq", "zmq-req", {**opts, "port": run.port(rep)}, name="caller")
        elif system == "nats":
            server, url = run.nats_server()
            rep = run.start("nats", "nats-rep", {**opts, "url": url}, name="replier")
            run.ready(rep)
            cpu0 = proc_cpu(server)
            req = run.start("nats", "nats-req", {**opts, "url": url}, name="caller")
        elif system == "yoton":
            rep = run.start("yoton", "yoton-rep", opts, name="replier")
            req = run.start("yoton", "yoton-req", {**opts, "port": run.port(rep)},
                            name="caller")
        else:
            raise ValueError(system)
        caller = run.result(req)
        replier = run.result(rep)
        out = {
            "median": caller["median"],
            "p99": caller["p99"],
            "cpu": {"caller": caller["cpu"] / calls, "replier": replier["cpu"] / calls},
        }
        if server is not None:
            # The server's CPU over the whole run, warm-up included.
            out["cpu"]["server"] = (proc_cpu(server) - cpu0) / (warmup + calls + 1)
        if instr_dir:
            counts = [run.instructions("caller"), run.instructions("replier")]
            out["instructions"] = (sum(counts) / calls) if None not in counts else None
    return out


# --- rounds


def plan_for(plan: dict, system: str) -> dict:
    return {**plan, **plan["yoton"]} if system == "yoton" else plan


def one(metric: str, system: str, plan: dict, base: dict, pass_: int = 0) -> dict:
    p = plan_for(plan, system)
    if metric == "pubsub-100":
        return pubsub_run(system, SMALL, p["pubsub-100"], 1, False, base)
    if metric == "pubsub-64k":
        count = p["pubsub-64k"]
        if system == "joined":
            k = max(1, min(1000, BATCH_BYTES // LARGE))
            count -= count % k
        return pubsub_run(system, LARGE, count, 1, False, base)
    if metric == "fanout":
        return pubsub_run(system, SMALL, p["fanout"], FANOUT, False, base)
    if metric == "chain":
        # Paired with a direct run of the same system next to it (first on even passes,
        # second on odd ones): the machine's load drifts less within a pair than between
        # the round's pub/sub and chain metrics.
        order = (False, True) if pass_ % 2 == 0 else (True, False)
        by_chain = {chain: pubsub_run(system, SMALL, p["pubsub-100"], 1, chain, base)
                    for chain in order}
        return {**by_chain[True], "direct_rate": by_chain[False]["rate"]}
    if metric == "reqrep":
        return reqrep_run(system, p["calls"], p["warmup"], base)
    raise ValueError(metric)


def brief(metric: str, r: dict) -> str:
    cpu = "  ".join(f"{k} {v * 1e6:.2f}" for k, v in r["cpu"].items())
    if metric == "reqrep":
        return (f"median {r['median'] * 1e6:9.1f} us  p99 {r['p99'] * 1e6:9.1f} us  "
                f"(CPU us/call: {cpu})")
    busy = " ".join(f"{v:.0%}" for v in r["busy"].values())
    paired = (f"; {r['rate'] / r['direct_rate']:.2f}x its direct run's "
              f"{r['direct_rate']:,.0f}") if "direct_rate" in r else ""
    return (f"{r['rate']:12,.0f} msg/s  ({r['seconds']:.2f} s; CPU us/msg: {cpu}; "
            f"busy {busy}{paired})")


def measure(metrics: list[str], systems: list[str], plan: dict, repeats: int, base: dict,
            skipped: dict) -> tuple[dict, list[str]]:
    runs: dict = {m: {s: [] for s in systems} for m in metrics}
    errors: list[str] = []
    for rnd in range(repeats):
        for metric in metrics:
            order = [s for s in systems if s in APPLIES[metric] and not skipped.get(s)]
            passes = PASSES.get(metric, 1)
            for pass_ in range(passes):
                # Rotate the order each pass so that drift in the machine's load hits all
                # alike.
                shift = (rnd * passes + pass_) % max(1, len(order))
                for system in order[shift:] + order[:shift]:
                    try:
                        result = one(metric, system, plan, base, pass_)
                    except RunError as e:
                        errors.append(f"{metric} {system}: {e}")
                        log(f"  round {rnd + 1}/{repeats} {metric:<10} {system:<8} FAILED: "
                            f"{str(e).splitlines()[0]}")
                        continue
                    runs[metric][system].append(result)
                    log(f"  round {rnd + 1}/{repeats} {metric:<10} {system:<8} "
                        f"{brief(metric, result)}")
    return runs, errors


def count_instructions(systems: list[str], plan: dict, base: dict,
                       skipped: dict) -> tuple[dict, str | None]:
    """Instructions per round trip of each system's caller + replier (one run each)."""
    if shutil.which("valgrind") is None:
        return {}, "n/a: valgrind is not installed (apt-get install valgrind)"
    out: dict = {}
    for system in systems:
        if system not in APPLIES["reqrep"] or skipped.get(system):
            continue
        p = plan_for(plan, system)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                r = reqrep_run(system, p["instr_calls"], p["warmup"], base, instr_dir=tmp)
            except RunError as e:
                out[system] = None
                log(f"  callgrind {system:<8} failed: {str(e).splitlines()[0]}")
                continue
        out[system] = r.get("instructions")
        shown = f"{out[system]:,.0f}" if out[system] else "n/a"
        log(f"  callgrind {system:<8} {shown} instructions per round trip "
            f"({p['instr_calls']} calls)")
    return out, None


# --- the table


def med(values: list[float]) -> float:
    return statistics.median(values)


def k(value: float) -> str:
    """A rate in few characters: 412k, 1.23M, 950."""
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e4:
        return f"{value / 1e3:.0f}k"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def us(seconds: float) -> str:
    value = seconds * 1e6
    if value >= 10_000:
        return f"{value / 1e3:,.1f} ms"
    return f"{value:,.1f} us"


def verdict(ratio: float | None, goal: float, at_least: bool) -> str:
    if ratio is None:
        return "n/a"
    ok = ratio >= goal if at_least else ratio <= goal
    return "PASS" if ok else "MISS"


def cpu_text(runs: list[dict]) -> str:
    roles = runs[0]["cpu"].keys()
    return "  ".join(f"{role} {med([r['cpu'][role] for r in runs]) * 1e6:.2f}" for role in roles)


def rate_block(title: str, metric: str, runs: dict, systems: list[str], why: dict,
               goal: tuple[float, str] | None, goals: dict, errors_by: dict) -> list[str]:
    lines = [title, f"  {'system':<26} {'median':>9} {'min-max':>15} {'x pyzmq':>8}  "
                    f"{'goal':<16} CPU us/msg of each process"]
    base = runs.get("pyzmq")
    base_rate = med([r["rate"] for r in base]) if base else None
    for system in systems:
        label = LABELS[system]
        r = runs.get(system)
        if system not in APPLIES[metric]:
            lines.append(f"  {label:<26} {NOT_APPLICABLE.get((metric, system), 'n/a')}")
            continue
        if why.get(system):
            lines.append(f"  {label:<26} {why[system]}")
            continue
        if not r:
            lines.append(f"  {label:<26} failed: {errors_by.get((metric, system), '?')}")
            continue
        rates = [x["rate"] for x in r]
        m = med(rates)
        ratio = m / base_rate if base_rate else None
        rtext = f"{ratio:8.2f}" if ratio is not None else f"{'n/a':>8}"
        gtext = ""
        if goal and system == "yotonnet":
            bar, name = goal
            gtext = f">= {bar}: {verdict(ratio, bar, True)}"
            goals[name] = {"ratio": ratio, "goal": f">= {bar}",
                           "verdict": verdict(ratio, bar, True)}
        lines.append(f"  {label:<26} {m:>9,.0f} {k(min(rates)) + '-' + k(max(rates)):>15} "
                     f"{rtext}  {gtext:<16} {cpu_text(r)}")
    return lines


def chain_block(runs: dict, systems: list[str], why: dict, goals: dict,
                errors_by: dict) -> list[str]:
    lines = ["chain through one forwarding process, 100 B, msg/s at the receiver",
             f"  {'system':<26} {'median':>9} {'min-max':>15} {'x direct':>8}  "
             f"{'goal':<16} CPU us/msg of each process"]
    for system in systems:
        label = LABELS[system]
        if system not in APPLIES["chain"]:
            lines.append(f"  {label:<26} {NOT_APPLICABLE.get(('chain', system), 'n/a')}")
            continue
        if why.get(system):
            lines.append(f"  {label:<26} {why[system]}")
            continue
        r = runs.get(system)
        if not r:
            lines.append(f"  {label:<26} failed: {errors_by.get(('chain', system), '?')}")
            continue
        rates = [x["rate"] for x in r]
        m = med(rates)
        ratio = med([x["rate"] / x["direct_rate"] for x in r])  # (of the pairs)
        rtext = f"{ratio:8.2f}"
        gtext = ""
        if system == "yotonnet":
            gtext = f">= {GOAL_CHAIN}: {verdict(ratio, GOAL_CHAIN, True)}"
            goals["chain >= 0.9x yotonnet direct"] = {
                "ratio": ratio, "goal": f">= {GOAL_CHAIN}",
                "verdict": verdict(ratio, GOAL_CHAIN, True)}
        lines.append(f"  {label:<26} {m:>9,.0f} {k(min(rates)) + '-' + k(max(rates)):>15} "
                     f"{rtext}  {gtext:<16} {cpu_text(r)}")
    return lines


def reqrep_block(runs: dict, instr: dict, instr_why: str | None, systems: list[str],
                 why: dict, goals: dict, errors_by: dict) -> list[str]:
    lines = ["req/rep round trip, 100 B, sequential calls",
             f"  {'system':<26} {'median':>9} {'min-max':>19} {'x pyzmq':>7} {'p99':>9} "
             f"{'min-max':>19} {'x pyzmq':>7} {'instr/RT':>9}  {'goals':<22} CPU us/call"]
    base = runs.get("pyzmq")
    base_med = med([r["median"] for r in base]) if base else None
    base_p99 = med([r["p99"] for r in base]) if base else None
    for system in systems:
        label = LABELS[system]
        if system not in APPLIES["reqrep"]:
            lines.append(f"  {label:<26} {NOT_APPLICABLE.get(('reqrep', system), 'n/a')}")
            continue
        if why.get(system):
            lines.append(f"  {label:<26} {why[system]}")
            continue
        r = runs.get(system)
        if not r:
            lines.append(f"  {label:<26} failed: {errors_by.get(('reqrep', system), '?')}")
            continue
        meds = [x["median"] for x in r]
        p99s = [x["p99"] for x in r]
        mm, pp = med(meds), med(p99s)
        rm = mm / base_med if base_med else None
        rp = pp / base_p99 if base_p99 else None
        count = instr.get(system)
        if instr_why:
            itext = "n/a"
        elif count is None:
            itext = "n/a"
        else:
            itext = (("~" if system == "yoton" else "") + f"{count / 1e3:,.0f}k"
                     + ("*" if system == "nats" else ""))
        gtext = ""
        if system == "yotonnet":
            gtext = (f"med {verdict(rm, GOAL_MEDIAN, False)}, "
                     f"p99 {verdict(rp, GOAL_P99, False)}")
            goals["req/rep median <= pyzmq"] = {
                "ratio": rm, "goal": f"<= {GOAL_MEDIAN}",
                "verdict": verdict(rm, GOAL_MEDIAN, False)}
            goals["req/rep p99 <= 1.2x pyzmq"] = {
                "ratio": rp, "goal": f"<= {GOAL_P99}", "verdict": verdict(rp, GOAL_P99, False)}

        def ratio_text(x: float | None) -> str:
            return f"{x:7.2f}" if x is not None else f"{'n/a':>7}"

        lines.append(
            f"  {label:<26} {us(mm):>9} {us(min(meds)) + '-' + us(max(meds)):>19} "
            f"{ratio_text(rm)} {us(pp):>9} {us(min(p99s)) + '-' + us(max(p99s)):>19} "
            f"{ratio_text(rp)} {itext:>9}  {gtext:<22} {cpu_text(r)}")
    if instr_why:
        lines.append(f"  instructions per round trip: {instr_why}")
    else:
        lines.append("  instr/RT: callgrind, caller + replier processes over the timed calls; "
                     "* NATS: its two clients only (nats-server, a Go binary, does not run "
                     "under valgrind); ~ Yoton: mostly its threads polling through the "
                     "~190 ms wait, so it moves with the number of calls counted")
    return lines


def report(runs: dict, instr: dict, instr_why: str | None, systems: list[str], why: dict,
           errors: list[str], repeats: int) -> tuple[list[str], dict]:
    goals: dict = {}
    errors_by = {}
    for e in errors:
        metric, system = e.split(":", 1)[0].split(" ", 1)
        errors_by[(metric, system)] = e.split(":", 1)[1].strip().splitlines()[0][:70]
    out = [f"median of {repeats} round(s) (req/rep: of {repeats * PASSES['reqrep']} passes, "
           f"{PASSES['reqrep']} a round; chain: of {repeats * PASSES['chain']} pairs of a chain "
           "and a direct run), min-max over them; separate processes on loopback TCP; ratios "
           "against pyzmq of the same run"]
    blocks = [
        ("pubsub-100", "pub/sub 100 B, msg/s at the receiver", (GOAL_100, "pub/sub 100 B >= 1.2x "
                                                                 "pyzmq")),
        ("pubsub-64k", "pub/sub 64 KiB, msg/s at the receiver", (GOAL_64K, "pub/sub 64 KiB >= "
                                                                  "1.0x pyzmq")),
        ("fanout", f"fan-out to {FANOUT} subscriber processes, 100 B, aggregate msg/s delivered "
                   "(CPU per delivered message)", (GOAL_FANOUT, "fan-out to 10 >= 1.0x pyzmq")),
    ]
    for metric, title, goal in blocks:
        if metric in runs:
            out += ["", *rate_block(title, metric, runs[metric], systems, why, goal, goals,
                                    errors_by)]
    if "chain" in runs:
        out += ["", *chain_block(runs["chain"], systems, why, goals,
                                 errors_by)]
    if "reqrep" in runs:
        out += ["", *reqrep_block(runs["reqrep"], instr, instr_why, systems, why, goals,
                                  errors_by)]
    if goals:
        out += ["", "issue 17 goals (yotonnet)"]
        for name, g in goals.items():
            ratio = f"{g['ratio']:.2f}" if g["ratio"] is not None else "n/a"
            out.append(f"  {name:<36} {ratio:>6}  {g['goal']:<7} {g['verdict']}")
    return out, goals


# --- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs, 1 round")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 3)")
    parser.add_argument("--json", action="store_true", help="print a JSON document on stdout")
    parser.add_argument("--only", default=",".join(METRICS),
                        help=f"comma-separated subset of {','.join(METRICS)}")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help=f"comma-separated subset of {','.join(SYSTEMS)}")
    parser.add_argument("--no-instr", action="store_true",
                        help="skip the callgrind instruction counts of req/rep")
    parser.add_argument("--yotonnet-path", default=ROOT,
                        help="directory holding the yotonnet package (default: this repo)")
    args = parser.parse_args(argv)

    plan = QUICK if args.quick else FULL
    repeats = args.repeats or (1 if args.quick else 3)
    metrics = [m for m in args.only.split(",") if m]
    systems = [s for s in args.systems.split(",") if s]
    for names, known, what in ((metrics, METRICS, "metric"), (systems, SYSTEMS, "system")):
        unknown = set(names) - set(known)
        if unknown:
            parser.error(f"unknown {what}(s) {sorted(unknown)}; choose from {known}")
    base = {"yotonnet_path": os.path.abspath(args.yotonnet_path)}
    why = availability()
    vers = versions()
    log(f"yotonnet from {base['yotonnet_path']}; python {sys.version.split()[0]}; "
        f"{os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}; "
        + ", ".join(f"{k_} {v}" for k_, v in vers.items()))
    for system in systems:
        if why.get(system):
            log(f"  {LABELS[system]}: {why[system]}")

    started = time.monotonic()
    runs, errors = measure(metrics, systems, plan, repeats, base, why)
    instr: dict = {}
    instr_why = None
    if "reqrep" in metrics:
        if args.no_instr:
            instr_why = "n/a: skipped (--no-instr)"
        else:
            instr, instr_why = count_instructions(systems, plan, base, why)
    lines, goals = report(runs, instr, instr_why, systems, why, errors, repeats)
    out = sys.stderr if args.json else sys.stdout
    print("\n" + "\n".join(lines), file=out, flush=True)
    log(f"\n({time.monotonic() - started:.0f} s; load {os.getloadavg()[0]:.2f})")
    if errors:
        log(f"\n{len(errors)} run(s) failed:")
        for e in errors:
            log("  " + e[:2000])
    if args.json:
        json.dump({
            "quick": args.quick, "repeats": repeats, "plan": plan, "python": sys.version,
            "cpus": os.cpu_count(), "loadavg": os.getloadavg(), "versions": vers,
            "yotonnet_path": base["yotonnet_path"], "skipped": {k_: v for k_, v in why.items()
                                                                 if v},
            "runs": runs, "instructions": instr, "goals": goals, "errors": errors,
        }, sys.stdout, indent=1)
        print()
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
