"""Printed lines per second from a hosted ipykernel to Jupyter frontends through the mesh,
beside jupyter_client reading the same kernel directly on its host, in the same run.

Run ``.venv/bin/python benchmarks/bench_jupyter.py`` (``make bench-jupyter``). Real
processes on loopback, as a user runs them:

* a broker, ``yotonnet kernel jb --jupyter python3`` (ipykernel, its IOPub set not
  to drop), and a relay node (``yotonnet node``) linked to it;
* two Jupyter frontends, each jupyter_client's ``KernelManager`` of the kernelspec
  ``yotonnet-jb`` (``yotonnet jupyter install``, in a temporary prefix) linked to the
  relay: two hops from the kernel (frontend process, relay, broker), each read by a
  ``BlockingKernelClient`` in a thread of its own;
* ``direct``: a ``BlockingKernelClient`` on the hosted kernel's own connection file,
  reading its IOPub on the host, as a Jupyter server would;
* ``alone`` (first, in each round): a plain ipykernel of its own (no yotonnet), run
  and read by one ``BlockingKernelClient`` on the host: what ipykernel does without
  the mesh.

Frontend A runs ``for i in range(N): print(i, flush=True)``: one IOPub message per
line (``--lines`` N, default 100,000; ``--quick`` 10,000). For each reader: the lines
it got (in order, compared with what was printed), the lines dropped (must be 0),
and lines per second from the request to the last line, with the ratio to
``alone``. Also the messages per second the kernel sent, against jupyter_server's
``iopub_msg_rate_limit`` (1,000 messages/s, over 3 s windows), past which a Jupyter
server stops forwarding output ("IOPub message rate exceeded") and the lines are
lost for its frontends. ``--repeats`` (1) runs it again on the same processes;
``--json`` prints the figures as JSON. Exits 1 if a reader of the hosted kernel lost
or reordered a line (ipykernel alone may: its IOPub is a ZMQ PUB socket, which drops
what a slow reader leaves past its queues).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: jupyter_server's default iopub_msg_rate_limit and rate_limit_window
SERVER_MSG_RATE, SERVER_WINDOW = 1000, 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_line(proc: subprocess.Popen, prefix: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the process ended before printing {prefix!r}")
        if line.startswith(prefix):
            return line.strip()
    raise RuntimeError(f"no {prefix!r} within {timeout:g} s")


class Reader(threading.Thread):
    """One Jupyter client reading IOPub until the run's idle (see the module docstring)."""

    def __init__(self, name: str, make_client: Any, code: str, lines: int,
                 runs: bool = False) -> None:
        super().__init__(name=name, daemon=True)
        self.make_client = make_client
        self.code = code
        self.lines = lines
        self.runs = runs
        self.ready = threading.Event()
        self.go = threading.Event()
        self.results: queue.Queue = queue.Queue()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            kc = self.make_client()
            kc.start_channels()
            kc.wait_for_ready(timeout=60)
            self.ready.set()
            while True:
                self.go.wait()
                self.go.clear()
                self.results.put(self.one(kc))
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            self.error = e
            self.ready.set()
            self.results.put(None)

    def one(self, kc: Any) -> dict:
        start = time.monotonic()
        mine = kc.execute(self.code) if self.runs else None
        parent = mine
        texts: list[str] = []
        stamps: list[float] = []
        last = start
        while True:
            msg = kc.get_iopub_msg(timeout=300)
            of = msg["parent_header"].get("msg_id")
            kind = msg["msg_type"]
            if parent is None:
                if kind == "execute_input" and msg["content"]["code"] == self.code:
                    parent = of
                continue
            if of != parent:
                continue
            if kind == "stream":
                texts.append(msg["content"]["text"])
                last = time.monotonic()
                stamps.append(last)
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                break
        text = "".join(texts)
        got = text.count("\n")
        return {"lines": got, "in_order": text == "".join(f"{i}\n" for i in range(self.lines)),
                "seconds": last - start, "messages": len(stamps), "stamps": stamps,
                "start": start}


def server_would_drop(stamps: list[float]) -> int:
    """Stream messages (arriving at ``stamps``) that a Jupyter server with its default
    message rate limit would not have forwarded: jupyter_server's own rule (its
    ``_limit_rate``): a message counts for SERVER_WINDOW seconds; once the count over the
    window passes SERVER_MSG_RATE per second, messages are dropped (and not counted)
    until the rate falls below 80 % of it. (Its data rate limit, 1 MB/s, is not
    modelled: it could only drop more.)"""
    window: deque[float] = deque()
    exceeded, dropped = False, 0
    for now in stamps:
        while window and now >= window[0]:
            window.popleft()
        window.append(now + SERVER_WINDOW)
        rate = len(window) / SERVER_WINDOW
        if rate > SERVER_MSG_RATE:
            exceeded = True
        elif exceeded and rate < 0.8 * SERVER_MSG_RATE:
            exceeded = False
        if exceeded:
            window.pop()
            dropped += 1
    return dropped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="10,000 lines")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    lines = 10_000 if args.quick else args.lines
    from jupyter_client import BlockingKernelClient
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    work = tempfile.mkdtemp(prefix="yotonnet-bench-jupyter-")
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
    procs: list[subprocess.Popen] = []
    managers: list[Any] = []
    py = sys.executable
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "yotonnet-jupyter-*")))
    try:
        broker = subprocess.Popen(
            [py, "-m", "yotonnet.cli", "kernel", "jb", "--jupyter", "python3", "--listen",
             "tcp:0:interface=127.0.0.1", "--default-role", "collaborator"],
            env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(broker)
        broker_ep = "tcp:" + wait_line(broker, "yotonnet kernel jb: listening on ").rsplit(
            " ", 1)[1]
        wait_line(broker, "yotonnet kernel jb: ready")
        dirs = set(glob.glob(os.path.join(tempfile.gettempdir(), "yotonnet-jupyter-*")))
        (kernel_dir,) = dirs - before
        connection_file = os.path.join(kernel_dir, "kernel-1.json")
        relay_port = free_port()
        relay = subprocess.Popen(
            [py, "-m", "yotonnet.cli", "node", "--name", "relay", "--listen",
             f"tcp:{relay_port}:interface=127.0.0.1", "--peer", broker_ep],
            env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(relay)
        prefix = os.path.join(work, "prefix")
        subprocess.run([py, "-m", "yotonnet.cli", "jupyter", "install", "jb", "--prefix",
                        prefix, "--connect", f"tcp:127.0.0.1:{relay_port}"], env=env,
                       check=True, stdout=subprocess.DEVNULL)
        ksm = KernelSpecManager(kernel_dirs=[os.path.join(prefix, "share", "jupyter",
                                                          "kernels")])
        code = f"for i in range({lines}): print(i, flush=True)"
        readers = []
        for name in ("A", "B"):
            km = KernelManager(kernel_name="yotonnet-jb", kernel_spec_manager=ksm)
            km.start_kernel(env=env)
            managers.append(km)
            readers.append(Reader(name, km.client, code, lines, runs=name == "A"))

        def direct() -> Any:
            kc = BlockingKernelClient(connection_file=connection_file)
            kc.load_connection_file()
            return kc

        readers.append(Reader("direct", direct, code, lines))
        plain = KernelManager(kernel_name="python3", transport="ipc",
                              ip=os.path.join(work, "plain"))
        plain.start_kernel(env=env)
        managers.append(plain)
        alone = Reader("alone", plain.client, code, lines, runs=True)
        for reader in [*readers, alone]:
            reader.start()
        for reader in [*readers, alone]:
            reader.ready.wait(90)
            if reader.error is not None:
                raise RuntimeError(f"reader {reader.name}: {reader.error}")
        rounds: list[dict] = []
        for _ in range(args.repeats):
            alone.go.set()
            first = alone.results.get(timeout=900)
            for reader in reversed(readers):  # the watchers first, then A runs the code
                reader.go.set()
            got = {r.name: r.results.get(timeout=900) for r in readers}
            for name, result in got.items():
                if result is None:
                    raise RuntimeError(f"reader {name}: {readers_error(readers, name)}")
            start = got["A"]["start"]
            for result in got.values():
                result["seconds"] += result.pop("start") - start
            if first is None:
                raise RuntimeError(f"reader alone: {alone.error}")
            first.pop("start")
            rounds.append({"alone": first, **got})
    finally:
        for km in managers:
            try:
                km.shutdown_kernel(now=True)
            except Exception:  # noqa: BLE001, S110 - ending anyway
                pass
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)
        for leftover in set(glob.glob(os.path.join(tempfile.gettempdir(),
                                                   "yotonnet-jupyter-*"))) - before:
            shutil.rmtree(leftover, ignore_errors=True)
    return report(rounds, lines, args.json)


def readers_error(readers: list[Reader], name: str) -> str:
    return next((str(r.error) for r in readers if r.name == name), "?")


def report(rounds: list[dict], lines: int, as_json: bool) -> int:
    ok = True
    out = []
    for n, got in enumerate(rounds, 1):
        def msg_rate(result: dict) -> int:
            return round(result["messages"] / result["seconds"]) if result["seconds"] else 0

        row = {"round": n, "lines": lines, "alone_messages_per_s": msg_rate(got["alone"]),
               "hosted_messages_per_s": msg_rate(got["direct"]),
               "server_limit_would_drop": server_would_drop(got["alone"]["stamps"]),
               "readers": {}}
        for name, result in got.items():
            rate = result["lines"] / result["seconds"] if result["seconds"] else 0.0
            dropped = lines - result["lines"]
            if name != "alone":  # (ipykernel alone may drop: that is its PUB socket's way)
                ok = ok and dropped == 0 and result["in_order"]
            row["readers"][name] = {
                "lines": result["lines"], "dropped": dropped, "in_order": result["in_order"],
                "seconds": round(result["seconds"], 3), "lines_per_s": round(rate)}
        for result in row["readers"].values():
            base = row["readers"]["alone"]["lines_per_s"]
            result["ratio_to_alone"] = round(result["lines_per_s"] / base, 3) if base else None
        out.append(row)
    if as_json:
        print(json.dumps(out, indent=1))
    else:
        for row in out:
            print(f"round {row['round']}: {lines:,} lines of print(i, flush=True), one IOPub "
                  f"message each: ipykernel alone sent {row['alone_messages_per_s']:,} msg/s, "
                  f"hosted {row['hosted_messages_per_s']:,} msg/s")
            print(f"  {'reader':<40} {'lines':>8} {'dropped':>8} {'in order':>9} "
                  f"{'lines/s':>9} {'vs alone':>9}")
            labels = {"alone": "ipykernel alone, jupyter_client on host",
                      "A": "frontend A (ran it), 2 hops",
                      "B": "frontend B (watching), 2 hops",
                      "direct": "jupyter_client on the hosted kernel"}
            for name, r in row["readers"].items():
                ratio = f"{r['ratio_to_alone']:.2f}" if r["ratio_to_alone"] else "-"
                print(f"  {labels[name]:<40} {r['lines']:>8,} {r['dropped']:>8} "
                      f"{'yes' if r['in_order'] else 'NO':>9} {r['lines_per_s']:>9,} "
                      f"{ratio:>9}")
            print(f"  a Jupyter server in front of ipykernel alone ({SERVER_MSG_RATE:,} msg/s "
                  f"over {SERVER_WINDOW:g} s, its default) would have dropped "
                  f"{row['server_limit_would_drop']:,} of these lines for its frontends")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
