"""Child processes for the ring-3 tests: spawn a peer script, read its stdout, kill it.

:func:`spawn_peer` starts ``tests/peers/peer.py`` (or another script) with the
running interpreter, ``-u`` and ``PYTHONPATH`` set to the repository root, so
the child imports this checkout's ``yotonnet``. The returned
:class:`PeerProcess` collects stdout lines; :meth:`PeerProcess.wait_for`
gives a Deferred for the next line starting with a prefix, and fails (with
the child's recent output, to make the failure readable) when the child exits
first or the timeout passes, so a hung child fails a test instead of blocking
it. The test's cleanup kills the child and waits for ``processEnded``, which
leaves the reactor clean for trial.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from typing import Any

from twisted.internet import defer, utils
from twisted.internet.protocol import ProcessProtocol
from waits import bounded

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_SCRIPT = os.path.join(REPO_ROOT, "tests", "peers", "peer.py")

#: seconds a test waits for a child's line before failing; generous for slow CI machines
DEFAULT_WAIT = 20.0


async def yotonnet_command(*args: str, module: str = "yotonnet") -> tuple[str, str, int]:
    """``python -m yotonnet ARGS`` run to its end: (stdout, stderr, exit status)."""
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    out, err, code = await bounded(
        utils.getProcessOutputAndValue(sys.executable, ["-m", module, *args], env=env,
                                       path=REPO_ROOT),
        f"yotonnet {' '.join(args)}")
    return out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), code


class ChildOutputTimeout(Exception):
    """A child did not print the awaited line in time."""


class ChildExited(Exception):
    """A child ended before printing the awaited line."""


class PeerProcess(ProcessProtocol):
    """Collects a child's stdout lines and lets a test wait for them."""

    #: what ``wait_for`` matches: a line starting with the text, or (True) containing it
    anywhere = False

    def __init__(self, reactor: Any, label: str) -> None:
        self.reactor = reactor
        self.label = label
        self.lines: list[str] = []
        self.stderr = bytearray()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.exit_reason: Any = None
        self._partial = b""
        # prefix -> index of the first line not yet handed out for that prefix
        self._cursor: dict[str, int] = {}
        self._waiters: list[tuple[str, defer.Deferred[str], Any]] = []

    # --- ProcessProtocol

    def outReceived(self, data: bytes) -> None:
        chunks = (self._partial + data).split(b"\n")
        self._partial = chunks.pop()
        for raw in chunks:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\r"))
        self._serve_waiters()

    def errReceived(self, data: bytes) -> None:
        self.stderr += data
        del self.stderr[:-20000]  # keep the tail: enough to explain a failure

    def processEnded(self, reason: Any) -> None:
        self.exit_reason = reason
        waiters, self._waiters = self._waiters, []
        for prefix, d, timer in waiters:
            timer.cancel()
            d.errback(
                ChildExited(f"{self.label} exited ({reason.getErrorMessage()}) "
                            f"before printing {prefix!r}\n{self.describe_output()}")
            )
        self.ended.callback(None)

    # --- for tests

    @property
    def running(self) -> bool:
        return self.exit_reason is None

    def wait_for(self, prefix: str, timeout: float = DEFAULT_WAIT) -> defer.Deferred[str]:
        """The next line (not handed out before for this prefix) that starts with ``prefix``."""
        line = self._take(prefix)
        if line is not None:
            return defer.succeed(line)
        if not self.running:
            return defer.fail(ChildExited(f"{self.label} has exited; no line {prefix!r}\n"
                                          f"{self.describe_output()}"))
        d: defer.Deferred[str] = defer.Deferred()
        timer = self.reactor.callLater(timeout, self._timed_out, d, prefix, timeout)
        self._waiters.append((prefix, d, timer))
        return d

    def kill(self) -> defer.Deferred[None]:
        """SIGKILL the child (if still running) and fire once it has been reaped."""
        if self.running:
            try:
                self.transport.signalProcess(signal.SIGKILL)
            except Exception:  # noqa: BLE001 - it may have exited between the check and here
                pass
        # A fresh Deferred each time, so several callers may wait for the same end.
        d: defer.Deferred[None] = defer.Deferred()
        if self.ended.called:
            d.callback(None)
        else:
            self.ended.addBoth(lambda result: (d.callback(None), result)[1])
        return d

    def describe_output(self) -> str:
        out = "\n".join(self.lines[-15:])
        err = self.stderr.decode("utf-8", "replace")[-3000:]
        return (
            f"--- {self.label} stdout (tail) ---\n{out}\n"
            f"--- {self.label} stderr (tail) ---\n{err}"
        )

    # --- internals

    def _take(self, prefix: str) -> str | None:
        start = self._cursor.get(prefix, 0)
        for i in range(start, len(self.lines)):
            line = self.lines[i]
            if prefix in line if self.anywhere else line.startswith(prefix):
                self._cursor[prefix] = i + 1
                return self.lines[i]
        self._cursor[prefix] = len(self.lines)
        return None

    def _serve_waiters(self) -> None:
        still = []
        for prefix, d, timer in self._waiters:
            line = self._take(prefix)
            if line is None:
                still.append((prefix, d, timer))
            else:
                timer.cancel()
                d.callback(line)
        self._waiters = still

    def _timed_out(self, d: defer.Deferred[str], prefix: str, timeout: float) -> None:
        self._waiters = [w for w in self._waiters if w[1] is not d]
        d.errback(
            ChildOutputTimeout(f"{self.label} printed no {prefix!r} line within {timeout:g} s\n"
                               f"{self.describe_output()}")
        )


def spawn_peer(
    testcase: Any,
    *args: str,
    label: str | None = None,
    script: str = PEER_SCRIPT,
    prefix: list[str] | None = None,
) -> PeerProcess:
    """Start ``python -u script *args`` as a child; the test's cleanup kills and reaps it.

    ``prefix`` runs it through another command (``ip netns exec NAME`` for a test host).
    """
    from twisted.internet import reactor

    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT
    proto = PeerProcess(reactor, label or f"peer {' '.join(args[:1])}")
    argv = [*(prefix or []), sys.executable, "-u", script, *args]
    executable = shutil.which(argv[0]) or argv[0]
    reactor.spawnProcess(proto, executable, argv, env=env, path=REPO_ROOT)
    testcase.addCleanup(proto.kill)
    return proto
