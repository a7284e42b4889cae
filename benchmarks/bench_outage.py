"""Outage to resume: how long a lossless stream stops when the link it uses fails, on real
hosts (network namespaces), mutual TLS, default timings.

Run ``.venv/bin/python benchmarks/bench_outage.py`` as root (``make bench-outage``).
Four hosts in a ring (a-b-c-d-a), one node process each (``tests/repair_peer.py``,
every link mutual TLS, ``ContextConfig()`` as it comes: heartbeat 1 s, busy_timeout
5 s, ...); a publishes ``[seq, time.time()]`` at 100 msg/s, c subscribes (lossless).
Each round fails the link in use on the publisher's side (a to its next hop towards c
by a's routes, once that node is seen forwarding) in one of two ways:

* ``silent``: every packet between the two hosts vanishes and neither end is told
  (``TestHosts.silence``: each resolves the other to a MAC address nobody has, so
  packets leave and are dropped, as over a pulled cable; sockets stay open with no
  error). Restored once the stream has resumed (and a second has passed), then the
  round waits until the same connection carries traffic again.
* ``reset``: the TCP connection is reset (``ss -K`` in a's namespace: a's socket is
  aborted, the other end gets an RST); the link is dialled again by itself.

The resume time is from the failure until c gets the first message published after it.
Printed per kind: median and max seconds over ``--repeats`` rounds (3), and every
figure. At the end the publisher stops and the subscriber drains: the messages lost or
repeated over the whole run are printed too (both must be 0; the exit status is 1 if
not, or if a run failed). Needs root and iproute2 (``ip``, ``ss``); without them it
prints ``skipped: <why>`` and exits 0. Options: ``--repeats``, ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
sys.path.insert(0, TESTS)

from netns import UNAVAILABLE, TestHosts  # noqa: E402

PEER = os.path.join(TESTS, "repair_peer.py")
PORT = 7300
NODES = ("a", "b", "c", "d")
RING = (("a", "b"), ("b", "c"), ("c", "d"), ("d", "a"))
KINDS = ("silent", "reset")
WAIT = 60.0


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def unavailable() -> str | None:
    if UNAVAILABLE:
        return UNAVAILABLE
    if shutil.which("ss") is None:
        return "the 'ss' command (Debian package iproute2) is not installed"
    return None


class Child:
    """A repair_peer.py process in a namespace; its stdout lines, collected by a thread."""

    def __init__(self, hosts: TestHosts, host: int, opts: dict) -> None:
        self.name = opts["name"]
        env = dict(os.environ, PYTHONPATH=ROOT)
        self.proc = subprocess.Popen(
            [*hosts.exec_prefix(host), sys.executable, "-u", PEER, json.dumps(opts)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, cwd=ROOT, text=True, bufsize=1,
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, args=(self.proc.stdout, self.lines),
                         daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.errors),
                         daemon=True).start()

    def _read(self, stream: Any, into: list[str]) -> None:
        for line in stream:
            with self.cond:
                into.append(line.rstrip("\n"))
                del into[:-5000]
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_for(self, prefix: str, timeout: float = WAIT, after: int = 0) -> tuple[int, str]:
        """(index, line) of the first line from ``after`` on that starts with ``prefix``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i in range(after, len(self.lines)):
                    if self.lines[i].startswith(prefix):
                        return i, self.lines[i]
                after = max(after, len(self.lines))
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name}: no {prefix!r} line within {timeout:g} s\n"
                                       + "\n".join(self.errors[-20:]))
                self.cond.wait(min(left, 0.5))

    def stat(self) -> dict | None:
        with self.cond:
            for line in reversed(self.lines):
                if line.startswith("STAT "):
                    return json.loads(line[5:])
        return None

    def until(self, predicate: Any, what: str, timeout: float = WAIT, since: float = 0.0) -> dict:
        """The newest STAT, made at ``since`` or later, once one satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stat = self.stat()
            if stat is not None and stat["t"] >= since and predicate(stat):
                return stat
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: gave up waiting for {what}\n"
                           + "\n".join(self.errors[-20:]))

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def where(hosts: TestHosts, name: str) -> str:
    return f"{hosts.address(NODES.index(name))}:{PORT}"


def start_ring(hosts: TestHosts, certs_dir: str) -> dict[str, Child]:
    roles = {"a": {"pub": True, "rate": 100, "wait_start": True}, "c": {"sub": True}}
    children: dict[str, Child] = {}
    for i, name in enumerate(NODES):
        opts = {"name": name, "node_id": i + 1, "certs": certs_dir, "nodes": list(NODES),
                "listen": where(hosts, name), "stat": 0.1,
                "peers": [where(hosts, b) for a, b in RING if a == name], **roles.get(name, {})}
        children[name] = Child(hosts, i, opts)
    for child in children.values():
        child.wait_for("READY")
    for child in children.values():
        child.command("dial")
    for name, child in children.items():
        others = set(NODES) - {name}
        child.until(lambda s, o=others: set(s["routes"]) >= o, "every node reachable")
    time.sleep(1.0)  # routes settle before anything is published
    children["a"].command("start")
    children["a"].wait_for("PUBLISHING")
    children["c"].until(lambda s: s["sub"]["count"] >= 100, "the stream to flow")
    return children


def link(children: dict[str, Child], a: str, b: str) -> list:
    stat = children[a].stat() or {}
    return stat.get("links", {}).get(b, ["absent", None])


def fresh(children: dict[str, Child]) -> None:
    now = time.time()
    for child in children.values():
        child.until(lambda s: True, "a new STAT", since=now)


def one_outage(hosts: TestHosts, children: dict[str, Child], kind: str) -> float:
    """Fail a's link to its next hop towards c; seconds until the stream resumed."""
    hop = in_use(children)
    i, j = 0, NODES.index(hop)
    before = (link(children, "a", hop), link(children, hop, "a"))
    sub = children["c"]
    if kind == "silent":
        hosts.silence(i, j)
    else:
        if hosts.reset(i, j) < 1:
            raise RuntimeError(f"ss -K found no connection between a and {hop}")
    cut = time.time()
    mark = len(sub.lines)
    sub.command(f"after {cut!r}")
    _, line = sub.wait_for("AFTER", after=mark)
    seconds = json.loads(line.split(" ", 1)[1])["received"] - cut
    if kind == "silent":
        time.sleep(1.0)
        hosts.unsilence(i, j)
        restored = time.time()
        for x, y, old in (("a", hop, before[0]), (hop, "a", before[1])):
            stat = children[x].until(lambda s, y=y: s["links"].get(y, [""])[0] == "up",
                                     f"its link to {y} up again", since=restored)
            if stat["links"][y][1] != old[1]:
                raise RuntimeError(f"the silent cut closed {x}'s connection to {y}\n"
                                   + logs(children, x, y))
    else:
        # a new connection, up at both ends
        for x, y, old in (("a", hop, before[0]), (hop, "a", before[1])):
            children[x].until(lambda s, y=y, old=old: s["links"].get(y, [""])[0] == "up"
                              and s["links"][y][1] != old[1], f"a new link to {y} up",
                              since=cut)
    time.sleep(1.0)  # routes settle on the restored link
    log(f"  {kind:<7} a-{hop}: resumed after {seconds:.3f} s")
    return seconds


def logs(children: dict[str, Child], *names: str) -> str:
    return "\n".join(f"--- {name}'s log (tail)\n" + "\n".join(children[name].errors[-25:])
                     for name in names)


def in_use(children: dict[str, Child]) -> str:
    """a's next hop towards c, by its routes, once the node there is seen forwarding."""
    for _ in range(3):
        fresh(children)
        hop = children["a"].stat()["routes"]["c"]
        before = children[hop].stat()["counters"]["forwarded"]
        time.sleep(0.5)
        fresh(children)
        if (children["a"].stat()["routes"]["c"] == hop
                and children[hop].stat()["counters"]["forwarded"] >= before + 20):
            return hop
    raise RuntimeError(f"no steady path from a to c (routes say {hop})")


def finish(children: dict[str, Child]) -> dict:
    """Stop publishing, drain the subscriber; what was lost or repeated."""
    pub, sub = children["a"], children["c"]
    mark = len(pub.lines)
    pub.command("stop")
    _, line = pub.wait_for("STOPPED", after=mark)
    stopped = json.loads(line.split(" ", 1)[1])
    sent = stopped["sent"]
    mark = len(sub.lines)
    sub.command(f"drain {sent}")
    _, line = sub.wait_for("DRAINED", after=mark)
    got = json.loads(line.split(" ", 1)[1])
    return {"sent": sent, "received": got["count"], "lost": sent - got["count"] + got["dups"],
            "repeated": got["dups"], "missed": got["missed"], "gaps": len(got["gaps"]),
            "publisher_error": stopped["error"]}


def timings() -> str:
    from yotonnet import ContextConfig

    config = ContextConfig()
    names = ("heartbeat", "reroute_after", "busy_timeout", "dead_timeout", "reconnect_initial")
    return ", ".join(f"{n} {getattr(config, n)} s" for n in names if hasattr(config, n))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    why = unavailable()
    if why:
        print(f"skipped: {why}")
        return 0
    from yotonnet.security import certs

    certs_dir = tempfile.mkdtemp(prefix="yotonnet-outage-")
    hosts = TestHosts(4)
    children: dict[str, Child] = {}
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    try:
        certs.write_bundle(certs_dir, {n: [hosts.address(i)] for i, n in enumerate(NODES)})
        hosts.create()
        log("4 hosts in a ring, mutual TLS, default timings; a publishes 100 msg/s to c")
        children = start_ring(hosts, certs_dir)
        for rep in range(args.repeats):
            log(f"round {rep + 1}/{args.repeats}")
            for kind in KINDS:
                times[kind].append(one_outage(hosts, children, kind))
        result = finish(children)
    except RuntimeError as e:
        log(f"run failed: {e}")
        return 1
    finally:
        for child in children.values():
            child.stop()
        hosts.destroy()
        shutil.rmtree(certs_dir, ignore_errors=True)
    summary = {kind: {"median": statistics.median(ts), "max": max(ts), "runs": ts}
               for kind, ts in times.items()}
    lines = [f"timings (ContextConfig defaults): {timings()}",
             f"{'outage':<10}{'median s':>10}{'max s':>10}  runs"]
    for kind, s in summary.items():
        lines.append(f"{kind:<10}{s['median']:>10.3f}{s['max']:>10.3f}  "
                     + " ".join(f"{t:.3f}" for t in s["runs"]))
    lines.append(f"messages: {result['sent']} sent, {result['received']} received, "
                 f"{result['lost']} lost, {result['repeated']} repeated, "
                 f"{result['missed']} reported missed")
    out = sys.stderr if args.json else sys.stdout
    print("\n".join(lines), file=out)
    if args.json:
        json.dump({"timings": timings(), "outages": summary, "messages": result}, sys.stdout,
                  indent=2)
    ok = (result["lost"], result["repeated"], result["missed"], result["publisher_error"]) \
        == (0, 0, 0, None)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
