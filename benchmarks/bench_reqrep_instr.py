"""Req/rep CPU cost in instructions: yotonnet against raw Twisted, repeatable on a busy machine.

Run ``.venv/bin/python benchmarks/bench_reqrep_instr.py`` (needs ``valgrind``).

bench_core.py times two processes, so its figures move with whatever else
the machine runs. This one counts the CPU instructions (valgrind's callgrind)
of one process that holds both ends of the same loop as bench_peers.py:
sequential ``await call(100 bytes)`` over loopback TCP on the real reactor,
``ReqChannel.call`` to a ``RepChannel`` echo (the caller dials, as in
bench_core) against ``Int32StringReceiver`` ping/echo. Each side runs twice,
with ``--calls`` calls and with none, and the difference divided by the calls
is the cost of one round trip, caller and replier together (kernel time is
not counted: both sides make the same system calls). Counts repeat to a few
parts in a thousand when the machine is quiet; under load, reads sometimes
take an extra reactor turn, so run it again if a figure looks off.

Two more rows split what yotonnet's eager writes (``ContextConfig.eager_writes``,
see ``LinkWriter.write_now``) save from the rest: yotonnet with them off (every
frame through Twisted's buffered ``transport.write``, as the baseline), and
the raw baseline given the same eager write (``socket.send`` when Twisted has
nothing buffered), so the last ratio is the messaging layer's own cost.

``--loop yot|raw N`` runs one loop without valgrind (what the counting runs).

yotonnet runs here with ``reply_poll = 0`` (yotonnet.mesh.replypoll): in one
process a caller's poll can never see its reply, since the replier cannot run
meanwhile, and would end at once on the request the replier has to read. Its
worth and its CPU across two processes are in ``bench_versus.py``.

``--path`` needs no valgrind: it counts the Python bytecodes each round trip
runs (``sys.settrace``), all of them and those on its critical path: from a
read (Twisted's ``doRead``) to the socket write it leads to, on each side. A
round trip's latency is that path plus two wake-ups; what runs after the
write overlaps the other side's work. Counts are exact and repeat run to run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PAYLOAD = b"x" * 100


class PathCounter:
    """Counts the bytecodes run while it is on (see ``--path``), per function, and
    those from each ``doRead`` to the next socket write."""

    WRITES = frozenset(("send", "sendmsg"))

    def __init__(self) -> None:
        self.ops = 0
        self.critical = 0
        self.read_at: int | None = None
        self.by_function: dict[tuple[str, str], int] = {}

    def trace(self, frame, event, arg):  # noqa: ANN001 - sys.settrace's signature
        frame.f_trace_opcodes = True
        if event == "opcode":
            self.ops += 1
            code = frame.f_code
            key = (os.path.basename(code.co_filename), code.co_name)
            self.by_function[key] = self.by_function.get(key, 0) + 1
        return self.trace

    def profile(self, frame, event, arg):  # noqa: ANN001 - sys.setprofile's signature
        if event == "call" and frame.f_code.co_name == "doRead":
            self.read_at = self.ops
        elif (event == "c_call" and self.read_at is not None
              and getattr(arg, "__name__", "") in self.WRITES):
            self.critical += self.ops - self.read_at
            self.read_at = None

    def start(self) -> None:
        sys.settrace(self.trace)
        sys.setprofile(self.profile)

    def stop(self) -> None:
        sys.settrace(None)
        sys.setprofile(None)

    def report(self, kind: str, calls: int) -> None:
        print(f"{LABELS[kind]}: {self.ops / calls:,.0f} bytecodes per round trip, "
              f"{self.critical / calls:,.0f} of them from a read to its write")
        top = sorted(self.by_function.items(), key=lambda item: -item[1])[:25]
        for (filename, name), n in top:
            print(f"  {n / calls:8.1f}  {filename}:{name}")


def loop(kind: str, count: int, path: str, counter: PathCounter | None = None) -> None:
    sys.path.insert(0, path)
    from twisted.internet import defer, reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
    from twisted.internet.protocol import Factory
    from twisted.protocols.basic import Int32StringReceiver

    import yotonnet  # imported by both sides, so that start-up cancels out

    class Echo(yotonnet.RepChannel):
        def echo(self, data: bytes) -> bytes:
            return data

    from eager_send import EagerSend

    bases = (EagerSend, Int32StringReceiver) if kind == "raw-eager" else (Int32StringReceiver,)

    class Raw(*bases):  # type: ignore[misc]
        def connectionMade(self) -> None:
            self.transport.setTcpNoDelay(True)

    class RawEcho(Raw):
        def stringReceived(self, data: bytes) -> None:
            self.sendString(data)

    class RawPing(Raw):
        def connectionMade(self) -> None:
            super().connectionMade()
            self.waiting: defer.Deferred[bytes] | None = None

        def call(self, data: bytes) -> defer.Deferred[bytes]:
            self.waiting = d = defer.Deferred()
            self.sendString(data)
            return d

        def stringReceived(self, data: bytes) -> None:
            d, self.waiting = self.waiting, None
            d.callback(data)

    async def calls(call, n: int) -> None:
        for _ in range(n):
            reply = await call(PAYLOAD)
            if reply != PAYLOAD:
                raise AssertionError("echo returned something else")

    async def main() -> None:
        if kind in ("yot", "yot-buffered"):
            # No reply poll: with both ends in one process the replier cannot run while
            # the caller polls, so every poll would be ended by the request it has to read
            # (its cost across processes is in bench_versus.py's CPU per call).
            config = yotonnet.ContextConfig(eager_writes=kind == "yot", reply_poll=0)
            rep_ctx = yotonnet.Context("rep", config=config)
            req_ctx = yotonnet.Context("req", config=config)
            Echo(rep_ctx, "bench")
            port = await rep_ctx.listen("tcp:0:interface=127.0.0.1")
            await req_ctx.connect(f"tcp:127.0.0.1:{port.getHost().port}")
            req = yotonnet.ReqChannel(req_ctx, "bench")
            await req.wait_for_responders()

            def call(p: bytes) -> defer.Deferred:
                return req.call("echo", p)
        else:
            port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
                Factory.forProtocol(RawEcho)
            )
            proto = await TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
                Factory.forProtocol(RawPing)
            )
            call = proto.call
        await calls(call, 200)  # warm-up, in every run
        if counter is not None:
            counter.start()
        await calls(call, count)
        if counter is not None:
            counter.stop()
            counter.report(kind, count)

    def run() -> None:
        d = defer.ensureDeferred(main())
        d.addErrback(lambda f: (f.printTraceback(), os._exit(1)))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()


def instructions(kind: str, count: int, path: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        env = {**os.environ, "PYTHONHASHSEED": "0"}  # same dict layouts in every run
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
             __file__, "--loop", kind, str(count), "--yotonnet-path", path],
            check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        with open(out) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
    raise RuntimeError("callgrind wrote no total")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per counted run")
    parser.add_argument("--yotonnet-path", default=ROOT, help="directory holding yotonnet")
    parser.add_argument("--loop", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--path", choices=sorted(LABELS), metavar="KIND",
                        help="count bytecodes per round trip (see above), no valgrind")
    args = parser.parse_args(argv)
    path = os.path.abspath(args.yotonnet_path)
    if args.loop:
        loop(args.loop[0], int(args.loop[1]), path)
        return 0
    if args.path:
        loop(args.path, min(args.calls, 500), path, PathCounter())
        return 0
    per_call = {}
    for kind in LABELS:
        total = instructions(kind, args.calls, path) - instructions(kind, 0, path)
        per_call[kind] = total / args.calls
    print(f"req/rep round trip, caller and replier in one process, yotonnet from {path}")
    print(f"  {'instructions/call':>44}")
    for kind, label in LABELS.items():
        print(f"  {label:30} {per_call[kind]:13,.0f}")
    for kind, base in RATIOS:
        print(f"  ratio {LABELS[kind]} / {LABELS[base]}: {per_call[kind] / per_call[base]:.2f}")
    return 0


LABELS = {
    "raw": "raw Twisted (baseline)",
    "yot": "yotonnet",
    "yot-buffered": "yotonnet, eager_writes off",
    "raw-eager": "raw Twisted, eager writes",
}
#: (kind, baseline kind): the first is the issue's bar, the last the layer's own cost
RATIOS = (("yot", "raw"), ("yot-buffered", "raw"), ("yot", "raw-eager"))


if __name__ == "__main__":
    sys.exit(main())
