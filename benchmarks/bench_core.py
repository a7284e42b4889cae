"""Core benchmark: yotonnet against raw Twisted, two processes on loopback, same run.

Run ``.venv/bin/python benchmarks/bench_core.py`` (``make bench``). It measures

* pub/sub throughput (messages/s, one way) of 100-byte and 64 KiB messages:
  a ``PubChannel`` (BINARY) in one process to a ``SubChannel.subscribe``
  counter in another, against ``Int32StringReceiver`` sender -> receiver;
  timed at the receiver from the first message to the last;
* req/rep round trip (median and p99 of sequential calls after a warm-up):
  ``ReqChannel.call`` to a ``RepChannel`` echo, against an
  ``Int32StringReceiver`` ping-pong echo; TCP_NODELAY everywhere.

Every measurement starts a fresh pair of processes (see bench_peers.py), is
repeated (3 times by default) with yotonnet and baseline runs interleaved, and
the best run of each side is reported (highest rate, lowest median, lowest
p99). The table gives ratio = yotonnet / baseline and the bars of the issue
(100-byte pub/sub ratio >= 0.5, req/rep median ratio <= 1.3) as PASS/MISS.
The exit status is 0 whether bars pass or miss, 1 if a run crashed.

Below each metric the table gives the CPU time per message (or call) of each
process, least of the runs: the side near 100% busy is the bottleneck, and
these move less with machine load than the times do.

Options: ``--quick`` (short run), ``--json`` (a JSON document on stdout; the
table goes to stderr), ``--only`` (some metrics), ``--repeats``, ``--pin``
(CPU placement: latency on a VM depends a lot on whether the two processes
share a CPU, since waking an idle vCPU costs tens of microseconds),
``--eager-writes off`` (yotonnet frames go through Twisted's buffered
``transport.write``, as the baseline's do: what ``ContextConfig.eager_writes``
saves), ``--yotonnet-path DIR`` (benchmark another copy of the package, e.g.
a scratch copy with a change), ``--profile DIR`` (instead of timing, run the yotonnet
cases once under cProfile in both processes, save the .pstats files in DIR and
print where the time goes).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEERS = os.path.join(HERE, "bench_peers.py")

SMALL, LARGE = 100, 64 * 1024
#: bytes the senders write per reactor turn (at most 1000 messages)
BATCH_BYTES = 1024 * 1024
PAIR_TIMEOUT = 180.0

# Sized for about 1-3 s per run on a 2-core VM.
FULL = {"pubsub-100": 1_000_000, "pubsub-64k": 40_000, "calls": 5000, "warmup": 500}
QUICK = {"pubsub-100": 100_000, "pubsub-64k": 4_000, "calls": 1000, "warmup": 100}
METRICS = ("pubsub-100", "pubsub-64k", "reqrep")
BAR_PUBSUB_100 = 0.5
BAR_REQREP_MEDIAN = 1.3


class RunError(Exception):
    pass


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


class Peer:
    """One child process (``script ROLE OPTS``, bench_peers.py by default); its stdout
    lines are collected by a thread."""

    def __init__(self, role: str, opts: dict, script: str = PEERS) -> None:
        self.role = role
        self.proc = subprocess.Popen(
            [sys.executable, script, role, json.dumps(opts)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(
            target=lambda: self.stderr.extend(self.proc.stderr), daemon=True
        ).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def expect(self, tag: str, deadline: float) -> str:
        """The rest of the first stdout line starting with ``tag``."""
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RunError(f"{self.role}: no {tag} line in time") from None
            if line is None:
                self.proc.wait()
                raise RunError(
                    f"{self.role} exited ({self.proc.returncode}) without {tag}:\n"
                    + "".join(self.stderr[-30:])
                )
            if line.startswith(tag + " "):
                return line[len(tag) + 1 :]

    def result(self, deadline: float) -> dict:
        result = json.loads(self.expect("RESULT", deadline))
        if "error" in result:
            raise RunError(f"{self.role}: {result['error']}\n{result.get('traceback', '')}")
        return result

    def stop(self, deadline: float) -> None:
        try:
            self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()  # our own child, by its handle
            self.proc.wait()


def run_pair(
    server: str, client: str, opts: dict, measured: str, extra: dict | None = None
) -> dict:
    """Start ``server``, point ``client`` at it, return both results.

    ``measured`` names the side whose result is the measurement; the other
    side's result is kept under ``"peer"``. ``extra`` maps a role to options
    for that process only (e.g. its profile file).
    """
    extra = extra or {}
    deadline = time.monotonic() + PAIR_TIMEOUT
    srv = Peer(server, {**opts, **extra.get(server, {})})
    cli = None
    try:
        port = int(srv.expect("PORT", deadline))
        cli = Peer(client, {**opts, **extra.get(client, {}), "port": port})
        results = {"server": srv.result(deadline), "client": cli.result(deadline)}
    finally:
        # A crashed side leaves the other waiting: give it a moment, then kill it.
        short = min(deadline, time.monotonic() + 10)
        for peer in (cli, srv):
            if peer is not None:
                peer.stop(short)
    other = "client" if measured == "server" else "server"
    return {**results[measured], "peer": results[other]}


PAIRS = {
    ("pubsub", "yotonnet"): ("yot-sub", "yot-pub", "server"),
    ("pubsub", "baseline"): ("raw-recv", "raw-send", "server"),
    ("reqrep", "yotonnet"): ("yot-rep", "yot-req", "client"),
    ("reqrep", "baseline"): ("raw-echo", "raw-ping", "client"),
}


def pin_cpus(pin: str) -> tuple[int | None, int | None]:
    """CPUs for (server, client): both on one CPU, one each, or left to the scheduler."""
    cpus = sorted(os.sched_getaffinity(0))
    if pin == "same":
        return cpus[-1], cpus[-1]
    if pin == "split" and len(cpus) >= 2:
        return cpus[-2], cpus[-1]
    return None, None


def one_run(metric: str, side: str, plan: dict, base_opts: dict, pin: str = "none") -> dict:
    if metric == "reqrep":
        opts = {**base_opts, "size": SMALL, "count": plan["calls"], "warmup": plan["warmup"]}
        kind = "reqrep"
    else:
        size = SMALL if metric == "pubsub-100" else LARGE
        batch = max(1, min(1000, BATCH_BYTES // size))
        opts = {**base_opts, "size": size, "count": plan[metric], "batch": batch}
        kind = "pubsub"
    server, client, measured = PAIRS[(kind, side)]
    server_cpu, client_cpu = pin_cpus(pin)
    extra = {server: {"cpu": server_cpu}, client: {"cpu": client_cpu}}
    return run_pair(server, client, opts, measured, extra)


def summarize(metric: str, runs: list[dict]) -> dict:
    # CPU seconds per message of each process (least of the runs): the side near
    # 100% busy is the bottleneck, and these move less with machine load than times.
    if metric == "reqrep":
        return {
            "median": min(r["median"] for r in runs),
            "p99": min(r["p99"] for r in runs),
            "medians": [r["median"] for r in runs],
            "p99s": [r["p99"] for r in runs],
            "caller_cpu": min(r["cpu"] / r["calls"] for r in runs),
            "replier_cpu": min(r["peer"]["cpu"] / max(1, r["peer"]["served"]) for r in runs),
        }
    rates = [r["rate"] for r in runs]
    return {
        "rate": max(rates),
        "rates": rates,
        "median_rate": statistics.median(rates),
        "recv_cpu": min(r["cpu"] / r["messages"] for r in runs),
        "send_cpu": min(r["peer"]["send_cpu"] / r["messages"] for r in runs),
    }


def measure(
    metrics: list[str], plan: dict, repeats: int, base_opts: dict, pin: str = "none"
) -> dict:
    raw: dict[str, dict[str, list[dict]]] = {m: {"yotonnet": [], "baseline": []} for m in metrics}
    for rep in range(repeats):
        for metric in metrics:
            # Alternate which side goes first so that drift hits both alike.
            sides = ("yotonnet", "baseline") if rep % 2 == 0 else ("baseline", "yotonnet")
            for side in sides:
                result = one_run(metric, side, plan, base_opts, pin)
                raw[metric][side].append(result)
                log(f"  run {rep + 1}/{repeats} {metric:<10} {side:<8} {brief(metric, result)}")
    return {
        m: {side: {**summarize(m, runs), "runs": runs} for side, runs in sides_.items()}
        for m, sides_ in raw.items()
    }


def brief(metric: str, r: dict) -> str:
    if metric == "reqrep":
        return f"median {r['median'] * 1e6:7.1f} us  p99 {r['p99'] * 1e6:7.1f} us"
    # CPU busy fraction of each side over its own window: ~100% marks the bottleneck.
    recv_busy = r["cpu"] / r["seconds"]
    send_busy = r["peer"]["send_cpu"] / r["peer"]["send_seconds"]
    return (
        f"{r['rate']:12,.0f} msg/s  ({r['seconds']:.2f} s, "
        f"recv cpu {recv_busy:.0%}, send cpu {send_busy:.0%})"
    )


def table(results: dict) -> tuple[list[str], dict]:
    rows = []
    bars = {}

    def row(name: str, yot: float, base: float, fmt: str, bar: str = "") -> float:
        ratio = yot / base
        rows.append(f"{name:<28} {yot:>14{fmt}} {base:>14{fmt}} {ratio:>7.2f}  {bar}")
        return ratio

    for metric, label in (("pubsub-100", "100 B"), ("pubsub-64k", "64 KiB")):
        if metric in results:
            r = results[metric]
            ratio = r["yotonnet"]["rate"] / r["baseline"]["rate"]
            bar = ""
            if metric == "pubsub-100":
                ok = ratio >= BAR_PUBSUB_100
                bars["pubsub-100 ratio >= 0.5"] = {"ratio": ratio, "pass": ok}
                bar = f">= {BAR_PUBSUB_100}: {'PASS' if ok else 'MISS'}"
            row(f"pub/sub {label} (msg/s)", r["yotonnet"]["rate"], r["baseline"]["rate"], ",.0f",
                bar)
            for key, name in (("recv_cpu", "receiver"), ("send_cpu", "sender")):
                row(f"  {name} CPU (us/msg)", r["yotonnet"][key] * 1e6,
                    r["baseline"][key] * 1e6, ",.2f")
    if "reqrep" in results:
        r = results["reqrep"]
        ratio = r["yotonnet"]["median"] / r["baseline"]["median"]
        ok = ratio <= BAR_REQREP_MEDIAN
        bars["reqrep median ratio <= 1.3"] = {"ratio": ratio, "pass": ok}
        row("req/rep median (us)", r["yotonnet"]["median"] * 1e6,
            r["baseline"]["median"] * 1e6, ",.1f",
            f"<= {BAR_REQREP_MEDIAN}: {'PASS' if ok else 'MISS'}")
        row("req/rep p99 (us)", r["yotonnet"]["p99"] * 1e6, r["baseline"]["p99"] * 1e6, ",.1f")
        for key, name in (("caller_cpu", "caller"), ("replier_cpu", "replier")):
            row(f"  {name} CPU (us/call)", r["yotonnet"][key] * 1e6,
                r["baseline"][key] * 1e6, ",.1f")
    head = f"{'metric':<28} {'yotonnet':>14} {'baseline':>14} {'ratio':>7}  bar"
    return [head, "-" * len(head), *rows], bars


def profile(directory: str, plan: dict, base_opts: dict, top: int, metrics: list[str]) -> None:
    """Run the yotonnet cases once under cProfile in both processes and print the top."""
    import pstats

    os.makedirs(directory, exist_ok=True)
    cases = [
        ("pubsub-100", "yot-sub", "yot-pub", "server",
         {"size": SMALL, "count": plan["pubsub-100"], "batch": 1000}),
        ("pubsub-64k", "yot-sub", "yot-pub", "server",
         {"size": LARGE, "count": plan["pubsub-64k"],
          "batch": max(1, min(1000, BATCH_BYTES // LARGE))}),
        ("reqrep", "yot-rep", "yot-req", "client",
         {"size": SMALL, "count": plan["calls"], "warmup": plan["warmup"]}),
    ]
    for name, server, client, measured, opts in cases:
        if name not in metrics:
            continue
        files = {r: os.path.join(directory, f"{name}-{r}.pstats") for r in (server, client)}
        res = run_pair(
            server, client, {**base_opts, **opts}, measured,
            extra={r: {"profile": f} for r, f in files.items()},
        )
        log(f"\n=== {name} under cProfile: {brief(name, res)}")
        for role, path in files.items():
            log(f"\n--- {role}: {path} (top {top} by own time)")
            stats = pstats.Stats(path, stream=sys.stderr)
            stats.strip_dirs().sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (1 repeat)")
    parser.add_argument("--json", action="store_true", help="print a JSON document on stdout")
    parser.add_argument("--repeats", type=int, default=None, help="runs per side (default 3)")
    parser.add_argument("--only", default=",".join(METRICS),
                        help=f"comma-separated subset of {','.join(METRICS)}")
    parser.add_argument("--yotonnet-path", default=ROOT,
                        help="directory holding the yotonnet package (default: this repo)")
    parser.add_argument(
        "--pin", choices=("none", "same", "split"), default="none",
        help="CPU placement of each pair: left to the scheduler (default), both on one CPU "
        "(latency is then pure CPU cost), or one CPU each",
    )
    parser.add_argument(
        "--eager-writes", choices=("on", "off"), default="on",
        help="yotonnet's ContextConfig.eager_writes (default on, as in yotonnet): off sends "
        "every frame through Twisted's buffered transport.write, as the baseline does",
    )
    parser.add_argument("--profile", metavar="DIR", help="profile the yotonnet cases instead")
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
    log(f"yotonnet from {base_opts['yotonnet_path']} (eager writes {args.eager_writes}); "
        f"python {sys.version.split()[0]}; {os.cpu_count()} CPUs; "
        f"load {os.getloadavg()[0]:.2f}")

    try:
        if args.profile:
            profile(args.profile, plan, base_opts, args.top, metrics)
            return 0
        results = measure(metrics, plan, repeats, base_opts, args.pin)
    except RunError as e:
        log(f"benchmark run failed: {e}")
        return 1

    lines, bars = table(results)
    out = sys.stderr if args.json else sys.stdout
    print(
        f"\nbest of {repeats} run(s) per side, loopback TCP, two processes each, pin={args.pin}",
        file=out,
    )
    print("\n".join(lines), file=out, flush=True)
    if args.json:
        doc = {
            "quick": args.quick,
            "repeats": repeats,
            "plan": plan,
            "python": sys.version,
            "cpus": os.cpu_count(),
            "loadavg": os.getloadavg(),
            "yotonnet_path": base_opts["yotonnet_path"],
            "pin": args.pin,
            "eager_writes": base_opts["eager_writes"],
            "results": results,
            "bars": bars,
        }
        json.dump(doc, sys.stdout, indent=1)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
