"""Flow-control benchmark: a publisher in a tight loop, paced end to end by a slow subscriber.

Run ``.venv/bin/python benchmarks/bench_flow.py`` (30 s of flood; ``--quick``
8 s). Four OS processes on loopback TCP (``benchmarks/flow_peers.py``)::

    P (publisher) --> F (forwarder) --> S (lossless 1,000 msg/s + latest keep=1 + echo)
                        |
                        +-------------> L (latest keep=1 only)

P to S is two links (one forwarding node between them; ``--forwarders 2``
makes it three). P publishes OBJECT ``[seq, time.time()]`` from a streaming
producer registered on its ``PubChannel``, up to ``--batch`` messages per
reactor turn, paced only by ``pauseProducing``/``resumeProducing`` (never a
sleep). S's lossless subscriber handles exactly ``--rate`` messages a second
(its callback returns a Deferred due at ``t0 + k / rate``). Beside it, a
``latest`` subscriber (keep=1) on S and another on L are sampled every 20 ms;
and P calls ``echo`` on S over req/rep (an unrelated channel on the same
links) every 10 ms, first for ``--idle`` seconds before the flood, then
during it.

Printed, with a PASS/MISS per bar:

* lossless stream: messages received, gaps and duplicates (each message
  carries its sequence number); after the flood S stops pacing and drains,
  and the last message must be P's last;
* rates: publisher vs subscriber in steady state (from P's first pause, when
  every window is full, to the end). P sends in bursts, one per return of
  credit (a quarter window at a time), so its rate is taken over whole
  credit cycles, burst start to burst start; S's is a least-squares fit.
  Bars: P within 10% of S, and S at its nominal rate within 5%. Also the
  messages in flight at the end (sent - taken by S) against what the windows
  allow;
* memory: VmRSS growth of P and F (and S, L) from just before the flood to
  its peak during it; bar: under 50 MB for P and each forwarder;
* each latest subscriber (on S beside the lossless one, and on L), sampled
  every 20 ms after the first second of flood: *staleness*, how long a
  message newer than the newest it has seen had already been published (P
  logs the time of each producer turn); *value age*, now - the time inside
  the newest value (it also grows while P is paused and publishes nothing);
  and *messages behind*, how many P had published beyond it. Bar: staleness
  p90 under 0.1 s;
* the echo's round trip during the flood against idle (median, p90, p99, and
  the five slowest with how far into the flood they came);
  bar: median during <= 2x idle;
* producer pauses and resumes, CREDIT frames in and out, blocks queued.

The exit status is 0 whether bars pass or miss, 1 if a run crashed (a child
died or printed no expected line in time).

Options: ``--seconds``, ``--quick``, ``--window`` (``ContextConfig.flow_window``
of every node, bytes; default the library's), ``--rate``, ``--batch``,
``--forwarders``, ``--idle``, ``--json`` (a JSON document on stdout; the
table goes to stderr).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEERS = os.path.join(HERE, "flow_peers.py")
sys.path.insert(0, ROOT)

from yotonnet import OBJECT  # noqa: E402
from yotonnet.core.flow import DEFAULT_WINDOW  # noqa: E402
from yotonnet.core.wire import HEADER_SIZE  # noqa: E402

BAR_RSS_MB = 50
BAR_RATE = 0.10  # publisher within 10% of the subscriber (steady state)
BAR_SUB_RATE = 0.05  # subscriber within 5% of its nominal rate
BAR_STALE = 0.1  # seconds, p90
BAR_RTT = 2.0  # flood median / idle median
#: the most a sender may overdraw its credit by: one read forwarded as a block
READ_SIZE = 65536
#: a pause between two producer turns longer than this is a wait for credit
RESUME_GAP = 0.005
#: seconds to wait for a child's line beyond what the scenario itself takes
SLACK = 60.0


class RunError(Exception):
    """A child crashed or printed no expected line in time."""


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Child:
    """One node process: its stdout lines collected by a thread, commands on stdin."""

    def __init__(self, role: str, opts: dict) -> None:
        self.role = role
        env = dict(os.environ, PYTHONPATH=ROOT)
        self.proc = subprocess.Popen(
            [sys.executable, "-u", PEERS, role, json.dumps(opts)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        self.lines: list[str] = []
        self.stderr: list[str] = []
        self.cond = threading.Condition()
        self.done = False
        self.cursor: dict[str, int] = {}
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.done = True
            self.cond.notify_all()

    def expect(self, tag: str, deadline: float) -> str:
        """The rest of the next stdout line starting with ``tag`` (ERROR fails at once)."""
        with self.cond:
            while True:
                start = self.cursor.get(tag, 0)
                for i in range(start, len(self.lines)):
                    line = self.lines[i]
                    if line.startswith("ERROR "):
                        raise RunError(f"{self.role} failed:\n{json.loads(line[6:])}")
                    if line.startswith(tag + " "):
                        self.cursor[tag] = i + 1
                        return line[len(tag) + 1 :]
                self.cursor[tag] = len(self.lines)
                if self.done:
                    self.proc.wait()
                    raise RunError(
                        f"{self.role} exited ({self.proc.returncode}) without {tag}:\n"
                        + "".join(self.stderr[-30:])
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RunError(f"{self.role}: no {tag} line in time\n" + self.tail())
                self.cond.wait(left)

    def stats(self) -> list[dict]:
        with self.cond:
            return [json.loads(x[5:]) for x in self.lines if x.startswith("STAT ")]

    def last_stat(self) -> dict:
        stats = self.stats()
        return stats[-1] if stats else {}

    def send(self, command: str) -> None:
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    def tail(self) -> str:
        with self.cond:
            out = "\n".join(self.lines[-10:])
        return f"--- {self.role} stdout ---\n{out}\n--- stderr ---\n" + "".join(self.stderr[-20:])

    def stop(self) -> None:
        self.send("quit")
        try:
            self.proc.stdin.close()
        except Exception:  # noqa: BLE001 - already gone
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # our own child, by its handle
            self.proc.wait()


def run(args: argparse.Namespace) -> dict:
    common = {"window": args.window, "stat": 0.5, "sample": 0.02}
    seconds = args.seconds
    deadline = time.monotonic() + SLACK
    children: list[Child] = []

    def start(role: str, **opts: object) -> Child:
        child = Child(role, {**common, **opts})
        children.append(child)
        return child

    try:
        sub = start("sub", rate=args.rate)
        port = int(sub.expect("PORT", deadline))
        fwds = []
        for _ in range(args.forwarders):
            fwd = start("fwd", down=port)
            port = int(fwd.expect("PORT", deadline))
            fwds.append(fwd)
        lat = start("lat", up=port)
        lat.expect("READY", deadline)
        pub = start(
            "pub", up=port, subs=3, idle=args.idle, seconds=seconds, batch=args.batch,
            probe=0.01,
        )
        flood = json.loads(pub.expect("FLOOD", deadline + args.idle))
        log(f"  flood started; {seconds:g} s to go")
        end = json.loads(pub.expect("END", time.monotonic() + seconds + SLACK))
        if end.get("error"):
            raise RunError(f"publisher stopped: {end['error']}")
        sent = end["sent"]
        # The last message reaches L as soon as P's last block has credit at F,
        # whatever S's lossless backlog: wait for it before S drains.
        lat_last = wait_stat(lat, lambda s: s.get("latest_seq", 0) >= sent, 30.0)
        sub_then = sub.last_stat()
        log(f"  flood ended: {sent:,} sent; draining S's backlog")
        sub.send(f"drain {sent}")
        drained = json.loads(sub.expect("DRAINED", time.monotonic() + SLACK))
        return {
            "flood": flood,
            "end": end,
            "drained": drained,
            "lat_saw_last": lat_last is not None,
            "sub_when_lat_saw_last": sub_then,
            "stats": {
                "pub": pub.stats(),
                "sub": sub.stats(),
                "lat": lat.stats(),
                **{f"fwd{i + 1}": f.stats() for i, f in enumerate(fwds)},
            },
        }
    except RunError:
        for child in children:
            log(child.tail())
        raise
    finally:
        for child in reversed(children):
            child.stop()


def wait_stat(child: Child, predicate, seconds: float) -> dict | None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        stat = child.last_stat()
        if stat and predicate(stat):
            return stat
        time.sleep(0.05)
    return None


# --- figures


def at_or_after(stats: list[dict], t: float) -> dict:
    for s in stats:
        if s["t"] >= t:
            return s
    return stats[-1]


def at_or_before(stats: list[dict], t: float) -> dict:
    best = stats[0]
    for s in stats:
        if s["t"] <= t:
            best = s
    return best


def rate(stats: list[dict], key: str, t0: float, t1: float) -> float:
    a, b = at_or_after(stats, t0), at_or_before(stats, t1)
    if b["t"] <= a["t"]:
        return 0.0
    return (b[key] - a[key]) / (b["t"] - a["t"])


def slope(stats: list[dict], key: str, t0: float, t1: float) -> float:
    """Least-squares rate of ``key`` over the STAT samples in [t0, t1].

    The publisher sends in bursts (credit returns a quarter window at a time),
    so its count is a staircase: a fit through every sample is steadier than
    the difference of two samples, which depends on where the steps fall.
    """
    pts = [(s["t"], s[key]) for s in stats if t0 <= s["t"] <= t1]
    if len(pts) < 2:
        return 0.0
    mt = statistics.fmean(t for t, _ in pts)
    mv = statistics.fmean(v for _, v in pts)
    var = sum((t - mt) ** 2 for t, _ in pts)
    return sum((t - mt) * (v - mv) for t, v in pts) / var if var else 0.0


def cycle_rate(turns: list[list], t0: float, t1: float) -> tuple[float, int]:
    """Publisher rate over whole credit cycles in [t0, t1], and how many cycles.

    P sends in bursts, each starting when credit returns (a turn after a pause);
    from the first such burst to the last, the count of messages over the time
    is the average rate with no partial cycle to bias it.
    """
    starts = [
        (t, seq) for (tp, _), (t, seq) in zip(turns, turns[1:], strict=False)
        if t - tp > RESUME_GAP and t0 <= t <= t1
    ]
    if len(starts) < 2:
        return 0.0, 0
    (ta, sa), (tb, sb) = starts[0], starts[-1]
    return (sb - sa) / (tb - ta), len(starts) - 1


def staleness(samples: list[list], turns: list[list], sent: int) -> list[float]:
    """For each (when, newest seq seen) sample: how long a newer message had existed.

    P logs (time, first seq) of each turn; the message after the one seen was
    published no later than its turn began (0 when it was not published yet).
    """
    firsts = [seq for _, seq in turns]
    out = []
    for when, seen in samples:
        nxt = seen + 1
        if nxt > sent:
            out.append(0.0)
            continue
        i = bisect.bisect_right(firsts, nxt) - 1
        out.append(max(0.0, when - turns[i][0]) if i >= 0 else 0.0)
    return out


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def summary(samples: list[float]) -> dict:
    return {"n": len(samples), "median": pct(samples, 0.5), "p90": pct(samples, 0.9),
            "max": max(samples) if samples else float("nan")}


def behind(samples: list[list], turns: list[list], sent: int) -> list[int]:
    """For each (when, newest seq seen) sample: messages P had published that were newer."""
    times = [t for t, _ in turns]
    out = []
    for when, seen in samples:
        i = bisect.bisect_right(times, when)  # the first turn that began after the sample
        published = turns[i][1] - 1 if i < len(turns) else sent
        out.append(max(0, published - seen))
    return out


def figures(r: dict, args: argparse.Namespace) -> dict:
    t_start, t_end = r["flood"]["t"], r["end"]["t"]
    stats = r["stats"]
    mid = t_start + (t_end - t_start) / 2
    out: dict = {"window": args.window or DEFAULT_WINDOW, "seconds": t_end - t_start}
    end, drained = r["end"], r["drained"]
    out["sent"] = end["sent"]
    out["lossless"] = {
        "received": drained["received"], "first": drained["first"], "last": drained["last"],
        "gaps": drained["gaps"], "dups": drained["dups"], "missed": drained["missed"],
        "discarded": drained["discarded"],
    }
    # Steady state: from P's first pause on (every window full), to the end of the flood.
    paused = [s["t"] for s in stats["pub"] if s["t"] >= t_start and s["paused"]]
    steady = paused[0] if paused else mid
    out["steady_from"] = steady - t_start
    pub_rate, cycles = cycle_rate(end["turn_log"], steady, t_end)
    out["cycles"] = cycles
    if cycles < 2:  # too short a flood for this window: a fit through the staircase
        pub_rate = slope(stats["pub"], "sent", steady, t_end)
    out["rates"] = {
        "pub_steady": pub_rate,
        "sub_steady": slope(stats["sub"], "received", steady, t_end),
        "pub_overall": end["sent"] / end["seconds"],
        "sub_overall": rate(stats["sub"], "received", t_start, t_end),
    }
    rss = {}
    for name, rows in stats.items():
        base = r["flood"]["rss"] if name == "pub" else at_or_before(rows, t_start)["rss"]
        during = [s["rss"] for s in rows if t_start <= s["t"] <= t_end + 1]
        if name == "pub":
            during.append(end["rss"])
        rss[name] = {"start_kb": base, "peak_kb": max(during or [base]),
                     "growth_mb": (max(during or [base]) - base) / 1024}
    out["rss"] = rss
    stale, age, lag = {}, {}, {}
    for name in ("sub", "lat"):
        samples = [x for s in stats[name] for x in s["samples"] if t_start + 1 <= x[0] <= t_end]
        lags = staleness(samples, end["turn_log"], end["sent"])
        ages = [x for s in stats[name] if t_start + 1 <= s["t"] <= t_end for x in s["stale"]]
        stale[name] = summary(lags)
        age[name] = summary(ages)
        lag[name] = summary(behind(samples, end["turn_log"], end["sent"]))
    out["stale"] = stale
    out["age"] = age
    out["behind"] = lag
    last_sub = at_or_before(stats["sub"], t_end)
    # Messages published but not yet taken by S's lossless subscriber, against what
    # the windows allow: each link may hold a window (plus one read's overdraw).
    frame = HEADER_SIZE + len(OBJECT.encode([end["sent"], time.time()]))
    links = args.forwarders + 1
    out["in_flight"] = {
        "at_end": end["sent"] - at_or_after(stats["sub"], t_end)["received"],
        "bound": (links * (out["window"] + READ_SIZE)) // frame + args.batch,
        "frame_bytes": frame,
    }
    out["latest_on_S"] = {"seq": last_sub["latest_seq"], "lossless_received": last_sub["received"],
                          "dropped": last_sub["latest_dropped"], "backlog": last_sub["backlog"]}
    out["lat_saw_last"] = r["lat_saw_last"]
    out["lossless_when_lat_saw_last"] = r["sub_when_lat_saw_last"].get("received")
    out["rtt"] = {"idle": end["idle_rtt"], "flood": end["flood_rtt"], "failed": end["failed"],
                  "worst": end["worst_rtt"],
                  "failures": end["failures"]}
    fwd_last = {k: v[-1] for k, v in stats.items() if k.startswith("fwd")}
    out["counters"] = {
        "pub": {**end["counters"], "resumes": end["resumes"], "turns": end["turns"]},
        **{k: {c: v.get(c, 0) for c in ("credit_in", "credit_out", "flow_queued",
                                       "flow_dropped", "forwarded")} for k, v in fwd_last.items()},
        "sub": {c: stats["sub"][-1].get(c, 0) for c in ("credit_out", "flow_dropped")},
    }
    return out


def bars(f: dict, args: argparse.Namespace) -> list[tuple[str, str, bool]]:
    ll, rates, rtt = f["lossless"], f["rates"], f["rtt"]
    ratio = rates["pub_steady"] / rates["sub_steady"] if rates["sub_steady"] else float("inf")
    rtt_ratio = rtt["flood"]["median"] / rtt["idle"]["median"]
    rows = [
        ("lossless: no gap, no duplicate, all delivered",
         f"gaps {ll['gaps']}, dups {ll['dups']}, first {ll['first']}, last {ll['last']:,} "
         f"of {f['sent']:,}",
         ll["gaps"] == 0 and ll["dups"] == 0 and ll["first"] == 1 and ll["last"] == f["sent"]
         and ll["received"] == f["sent"]),
        (f"publisher rate within {BAR_RATE:.0%} of subscriber (steady)",
         f"{rates['pub_steady']:,.0f} vs {rates['sub_steady']:,.0f} msg/s (x{ratio:.3f})",
         abs(ratio - 1) <= BAR_RATE),
        (f"subscriber at {args.rate:,.0f}/s within {BAR_SUB_RATE:.0%}",
         f"{rates['sub_steady']:,.0f} msg/s",
         abs(rates["sub_steady"] / args.rate - 1) <= BAR_SUB_RATE),
    ]
    for name in sorted(k for k in f["rss"] if k == "pub" or k.startswith("fwd")):
        g = f["rss"][name]["growth_mb"]
        rows.append((f"RSS growth of {name} < {BAR_RSS_MB} MB", f"{g:.1f} MB", g < BAR_RSS_MB))
    for name, label in (("sub", "latest on S (beside the lossless)"), ("lat", "latest on L")):
        s = f["stale"][name]
        rows.append((f"staleness p90 < {BAR_STALE} s: {label}",
                     f"median {s['median']:.3f} s, p90 {s['p90']:.3f} s, max {s['max']:.3f} s",
                     s["p90"] < BAR_STALE))
    rows.append((f"echo round trip during flood <= {BAR_RTT:g}x idle (median)",
                 f"{rtt['flood']['median'] * 1e3:.2f} ms vs {rtt['idle']['median'] * 1e3:.2f} ms "
                 f"(x{rtt_ratio:.2f}); {rtt['failed']} failed",
                 rtt_ratio <= BAR_RTT and rtt["failed"] == 0))
    return rows


def report(f: dict, args: argparse.Namespace) -> list[str]:
    rates, rtt = f["rates"], f["rtt"]
    lines = [
        f"flow benchmark: P -> {'F -> ' * args.forwarders}S ({args.forwarders + 1} links), "
        f"L on the first forwarder; window {f['window']:,} B; flood {f['seconds']:.1f} s; "
        f"S handles {args.rate:,.0f} msg/s",
        "",
        f"messages sent by P           {f['sent']:>12,}",
        f"lossless received by S       {f['lossless']['received']:>12,}   (gaps "
        f"{f['lossless']['gaps']}, dups {f['lossless']['dups']}, missed "
        f"{f['lossless']['missed']}, discarded {f['lossless']['discarded']})",
        f"publisher rate, steady       {rates['pub_steady']:>12,.0f} msg/s   (whole flood "
        f"{rates['pub_overall']:,.0f}; "
        + (f"over {f['cycles']} credit cycles)" if f["cycles"] >= 2 else
           "fewer than 2 credit cycles in the flood: a rough fit, run longer)"),
        f"subscriber rate, steady      {rates['sub_steady']:>12,.0f} msg/s   (whole flood "
        f"{rates['sub_overall']:,.0f})",
    ]
    fl = f["in_flight"]
    lines.append(f"in flight at flood end       {fl['at_end']:>12,}   (sent - taken by S; the "
                 f"windows allow {fl['bound']:,} of {fl['frame_bytes']} B)")
    lines.append(f"steady state from            {f['steady_from']:>12.1f} s  (P's first pause)")
    for name, r in f["rss"].items():
        lines.append(f"RSS {name:<5} start {r['start_kb'] / 1024:7.1f} MB  peak "
                     f"{r['peak_kb'] / 1024:7.1f} MB  growth {r['growth_mb']:6.1f} MB")
    for name in ("sub", "lat"):
        for key, what in (("stale", "staleness"), ("age", "value age")):
            s = f[key][name]
            lines.append(f"{what:<9} latest on {name.upper()[0]}   median {s['median']:.3f} s  "
                         f"p90 {s['p90']:.3f} s  max {s['max']:.3f} s  ({s['n']} samples)")
        s = f["behind"][name]
        lines.append(f"msgs behind latest on {name.upper()[0]}  median {s['median']:,}  p90 "
                     f"{s['p90']:,}  max {s['max']:,}  (published by P, newer than its newest)")
    los = f["latest_on_S"]
    lines.append(f"latest on S at flood end: seq {los['seq']:,} while the lossless had taken "
                 f"{los['lossless_received']:,} (backlog {los['backlog']:,} B); dropped "
                 f"{los['dropped']:,}")
    lines.append(f"L saw P's last message before S drained: {f['lat_saw_last']} (lossless then "
                 f"at {f['lossless_when_lat_saw_last']})")
    for phase in ("idle", "flood"):
        p = rtt[phase]
        lines.append(f"echo P->S round trip {phase:<5}   median {p['median'] * 1e3:.2f} ms  p90 "
                     f"{p['p90'] * 1e3:.2f} ms  p99 {p['p99'] * 1e3:.2f} ms  max "
                     f"{p['max'] * 1e3:.2f} ms  ({p['n']} calls)")
    lines.append("slowest flood round trips    " + ", ".join(
        f"{r * 1e3:.1f} ms at {at:.1f} s" for r, at in rtt["worst"]))
    for name, c in f["counters"].items():
        lines.append(f"counters {name:<5} " + ", ".join(f"{k} {v:,}" for k, v in c.items()))
    lines.append("")
    for what, value, ok in bars(f, args):
        lines.append(f"{'PASS' if ok else 'MISS'}  {what:<58} {value}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--quick", action="store_true", help="8 s of flood")
    parser.add_argument("--window", type=int, default=0, help="flow_window of every node")
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--forwarders", type=int, default=1)
    parser.add_argument("--idle", type=float, default=2.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 8.0
    try:
        result = run(args)
        f = figures(result, args)
    except RunError as e:
        log(f"CRASH: {e}")
        return 1
    for line in report(f, args):
        log(line) if args.json else print(line)
    if args.json:
        f["bars"] = [{"bar": w, "value": v, "pass": ok} for w, v, ok in bars(f, args)]
        print(json.dumps(f, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
