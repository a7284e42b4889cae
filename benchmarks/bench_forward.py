"""Forwarding micro benchmark: a node's Python cost per DATA frame it receives.

Run ``.venv/bin/python benchmarks/bench_forward.py``. In one process it builds
a ``yotonnet.testing.MemoryMesh`` chain n0 -> n1 -> n2 with a BINARY
subscriber on n2, prebuilds 100-byte DATA frames as n0 publishes them, joins
them into reads of 450 frames (about 64 KiB, what a TCP read brings) and
hands those reads straight to a link's ``dataReceived``, with the
downstream transport writing nowhere and unlimited credit downstream, so the
time is the node's own code only. Cases:

* ``forward``: n1, the middle node, only forwards (the chain benchmark's B);
* ``forward+local``: n1 also has a local subscriber (a callback counter);
* ``forward-varied``: as ``forward`` with payloads of 50 to 150 bytes;
* ``subscribe``: n2, the end node, delivers to its subscriber's callback
  counter (the chain's C, without sockets).

Baseline, in the same run and on the same reads: ``split``, the cheapest
per-frame Python loop that could cut such reads into frames (one
``struct.unpack_from`` of the length field per frame, nothing else). Each
case prints us/frame (best of the repeats, each over all the reads) and
ratio = case / split, which moves less than the times with machine load.

Options: ``--frames N`` (per repeat, default 100,000), ``--repeats`` (5),
``--json`` (a JSON document on stdout; the table goes to stderr),
``--compare DIR`` (also measure the yotonnet package under DIR, e.g. a copy
from before a change, in child processes interleaved with this one; its
columns are printed beside), ``--profile`` (run the ``forward`` case once
under cProfile and print where the time goes).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CASES = ("forward", "forward+local", "forward-varied", "subscribe")
SIZE = 100
READ_FRAMES = 450
_LENGTH = struct.Struct("<I")


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


class Bench:
    """One chain and the reads to feed it; import yotonnet only once sys.path is set."""

    def __init__(self) -> None:
        from yotonnet import BINARY, PubChannel, SubChannel
        try:
            from yotonnet.core import wire
        except ImportError:  # a tree from before the core/ folder (for --compare)
            from yotonnet import wire
        from yotonnet.testing import MemoryMesh

        self.wire = wire
        mesh = self.mesh = MemoryMesh(3, seed=1)
        mesh.link_chain()
        n0, n1, n2 = self.n0, self.n1, self.n2 = mesh
        self.far = SubChannel(n2, "bench", BINARY)
        self.far_count = [0]
        self.far.subscribe(lambda _m, c=self.far_count: c.__setitem__(0, c[0] + 1))
        self.pub = PubChannel(n0, "bench", BINARY)
        mesh.settle()
        self.channel = self.pub.channel_id
        self.tag = BINARY.tag
        self.seq = 1000
        # n1's downstream and n2's upstream write nowhere, with credit to spare.
        self.fwd_up = n1.links[n0.node_id]
        down = n1.links[n2.node_id]
        down.transport.write = lambda data: None
        down.transport.writeSequence = lambda seq: None
        down.flow.outbox(self.channel).credit = 1 << 60
        self.sub_up = n2.links[n1.node_id]
        # Credit frames going back up are dropped too (nobody pumps the mesh here).
        self.fwd_up.transport.write = lambda data: None
        self.sub_up.transport.write = lambda data: None
        self.local: object = None
        self.local_count = [0]

    def reads(self, frames: int, varied: bool = False) -> list[bytes]:
        """``frames`` DATA frames as n0 sends them, joined into reads of READ_FRAMES."""
        wire = self.wire
        pack, me = wire.HEADER.pack, self.n0.node_id
        out = []
        for seq in range(self.seq, self.seq + frames):
            size = 50 + seq % 101 if varied else SIZE
            out.append(
                pack(
                    wire.HEADER_TAIL + size, int(wire.FrameKind.DATA), 10, 0, self.tag,
                    self.channel, me, 0, seq,
                )
                + b"x" * size
            )
        self.seq += frames
        return [b"".join(out[i : i + READ_FRAMES]) for i in range(0, frames, READ_FRAMES)]

    def set_local(self, on: bool) -> None:
        from yotonnet import BINARY, SubChannel

        if on and self.local is None:
            self.local = SubChannel(self.n1, "bench", BINARY)
            count = self.local_count
            self.local.subscribe(lambda _m: count.__setitem__(0, count[0] + 1))
        elif not on and self.local is not None:
            self.local.close()
            self.local = None
        # the fan-out caches hold the subscriber set: drop them (older trees: a method of
        # the context; now the core's topology)
        node = getattr(self.n1, "node", None)
        if node is not None:
            node.topology.forget_paths()
        else:
            self.n1._forget_paths()

    def run(self, case: str, frames: int) -> float:
        """Seconds per frame for one pass of ``case`` over fresh reads."""
        reads = self.reads(frames, varied=case == "forward-varied")
        if case == "split":
            return time_split(reads, frames)
        self.set_local(case == "forward+local")
        link = self.sub_up if case == "subscribe" else self.fwd_up
        receive = link.dataReceived
        before = self.n1.counters["forwarded"], self.far_count[0], self.local_count[0]
        t = time.process_time()
        for data in reads:
            receive(data)
        dt = time.process_time() - t
        after = self.n1.counters["forwarded"], self.far_count[0], self.local_count[0]
        moved = {
            "forward": (frames, 0, 0),
            "forward-varied": (frames, 0, 0),
            "forward+local": (frames, 0, frames),
            "subscribe": (0, frames, 0),
        }[case]
        if tuple(a - b for a, b in zip(after, before, strict=True)) != moved:
            raise RuntimeError(f"{case}: frames went missing ({before} -> {after})")
        return dt / frames


def time_split(reads: list[bytes], frames: int) -> float:
    unpack = _LENGTH.unpack_from
    t = time.process_time()
    count = 0
    for data in reads:
        pos, n = 0, len(data)
        while pos < n:
            pos += 4 + unpack(data, pos)[0]
            count += 1
    dt = time.process_time() - t
    assert count == frames
    return dt / frames


def measure(frames: int, repeats: int) -> dict[str, float]:
    """Best seconds per frame of each case and the baseline, interleaved."""
    bench = Bench()
    best: dict[str, float] = {}
    for _ in range(repeats):
        for case in ("split", *CASES):
            best[case] = min(best.get(case, float("inf")), bench.run(case, frames))
    return best


def child(path: str, frames: int, repeats: int) -> dict[str, float]:
    """measure() in a fresh interpreter importing yotonnet from ``path``."""
    code = (
        f"import sys, json; sys.path.insert(0, {path!r}); sys.path.insert(1, {HERE!r}); "
        f"import bench_forward as b; print(json.dumps(b.measure({frames}, {repeats})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False
    )
    if out.returncode:
        raise RuntimeError(f"benchmark of {path} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def profile(frames: int) -> None:
    import cProfile
    import pstats

    bench = Bench()
    bench.run("forward", frames)  # warm up
    reads = bench.reads(frames)
    receive = bench.fwd_up.dataReceived
    prof = cProfile.Profile()
    prof.enable()
    for data in reads:
        receive(data)
    prof.disable()
    pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(12)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--compare", metavar="DIR")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.frames < READ_FRAMES or args.repeats < 1:
        parser.error(f"--frames must be at least {READ_FRAMES} and --repeats at least 1")
    if args.profile:
        sys.path.insert(0, ROOT)
        profile(args.frames)
        return 0
    paths = {"this": ROOT}
    if args.compare:
        if not os.path.isfile(os.path.join(args.compare, "yotonnet", "wire.py")):
            parser.error(f"--compare {args.compare}: no yotonnet package in that directory")
        paths["compare"] = os.path.abspath(args.compare)
    results: dict[str, dict[str, float]] = {}
    # Interleave the copies, a repeat at a time, so that load changes hit both alike.
    for _ in range(args.repeats):
        for name, path in paths.items():
            got = child(path, args.frames, 1)
            mine = results.setdefault(name, {})
            for case, value in got.items():
                mine[case] = min(mine.get(case, float("inf")), value)
    load = os.getloadavg()[0]
    log(
        f"python {sys.version.split()[0]}; {os.cpu_count()} CPUs; load {load:.2f}; "
        f"{args.frames:,} frames of {SIZE} B per repeat in reads of {READ_FRAMES}; "
        f"best of {args.repeats}"
    )
    names = list(paths)
    head = f"{'case':<16}" + "".join(f"{n + ' us/frame':>18}{'ratio':>8}" for n in names)
    log(head)
    log("-" * len(head))
    for case in ("split", *CASES):
        row = f"{case:<16}"
        for name in names:
            r = results[name]
            row += f"{r[case] * 1e6:>18.3f}{r[case] / r['split']:>8.1f}"
        log(row)
    log("ratio: us/frame over the split baseline measured in the same process")
    if args.json:
        doc = {
            name: {
                case: {"us_per_frame": v * 1e6, "ratio": v / r["split"]} for case, v in r.items()
            }
            for name, r in results.items()
        }
        print(json.dumps({"load": load, "frames": args.frames, "results": doc}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
