"""Hostile input against a LIVE node over real sockets (Hypothesis).

A node runs as its own process (``yotonnet node`` with token authentication
and small limits) and Hypothesis throws at it, each over a fresh TCP
connection: random bytes; valid preambles and HELLOs (with and without a good
token) mutated by flips, cuts and insertions; and, after a genuine login,
random frames of every kind plus mutated control messages (claims, records,
identities). Meanwhile one well-behaved, authenticated link is kept open and
must keep answering heartbeats. At the end the node process must still run,
its log must hold no traceback, its memory must not have grown without bound,
and a real client command must still work through it.

The tests are synchronous (blocking sockets, Hypothesis drives them): the
node's reactor is in the other process. Figures (inputs tried, crashes) are
printed and appended to ``$YOTONNET_HOSTILE_FIGURES`` when set.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time

import rawwire
from certs_fixture import TOKENS, path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nodeproc import LoggedNode
from twisted.trial.unittest import SynchronousTestCase

from yotonnet.core import wire
from yotonnet.core.messages import encode_object
from yotonnet.core.wire import FrameKind

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = int(os.environ.get("YOTONNET_HOSTILE_EXAMPLES", "200"))
#: growth of the node's resident memory over a whole test that counts as unbounded
MAX_RSS_GROWTH = 64 * 1024 * 1024
IO_TIMEOUT = 10.0

HYPOTHESIS = settings(
    max_examples=EXAMPLES, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-c", "from yotonnet.cli import main; main()", *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT,
    )


def node_process() -> LoggedNode:
    """``yotonnet node`` with small limits, so that the attacks reach them."""
    return LoggedNode(
        "[context]\nmax_frame = 65536\nhandshake_timeout = 2.0\n"
        "[security]\nmax_links = 64\nmax_channels_per_link = 50\n"
        "max_pending_per_link = 20\n"
    )


def blind_login(method: str) -> bytes:
    """A greeting and an authentication message sent without waiting for the node's
    nonce (so its proof cannot be right): the bytes mutated handshakes start from."""
    node_id = random.getrandbits(63) + 1
    message = {
        "none": ["auth", "none"],
        "secret": ["auth", "secret", "0" * 64],
        "token": ["auth", "token", "f" * 64],
        "password": ["auth", "password", "carol"],
    }[method]
    return rawwire.Dialler(node_id, "probe").greeting() + rawwire.control(message)


def login(port: int, token: str) -> rawwire.SocketPeer:
    """A genuine token login over a fresh connection (the exchange done by hand)."""
    dialler = rawwire.Dialler(random.getrandbits(63) + 1, "probe", "token", token=token)
    peer = rawwire.SocketPeer(("127.0.0.1", port), dialler, timeout=IO_TIMEOUT)
    peer.handshake()
    return peer


class GoodLink:
    """A well-behaved authenticated link on a blocking socket: it answers pings."""

    def __init__(self, port: int) -> None:
        self.peer = login(port, TOKENS["alice"])
        self.sock = self.peer.sock
        self.sock.settimeout(IO_TIMEOUT)
        self.decoder = wire.FrameDecoder(expect_preamble=False)
        self.pings = 0

    def wait_for(self, predicate) -> wire.Frame:
        deadline = time.monotonic() + IO_TIMEOUT
        while time.monotonic() < deadline:
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError("the node closed the good link")
            for frame in self.decoder.feed(data):
                if frame.kind == FrameKind.PING:  # answer the node's heartbeat
                    self.sock.sendall(wire.encode_frame(FrameKind.PONG, seq=frame.seq))
                if predicate(frame):
                    return frame
        raise AssertionError("the node stopped answering the good link")

    def ping(self) -> None:
        self.pings += 1
        seq = 10**9 + self.pings
        self.sock.sendall(wire.encode_frame(FrameKind.PING, seq=seq))
        self.wait_for(lambda f: f.kind == FrameKind.PONG and f.seq == seq)


def throw(port: int, data: bytes) -> None:
    """Send ``data`` on a fresh connection, read briefly whatever comes back, hang up."""
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(0.02)
            while s.recv(65536):
                pass
        except OSError:
            pass  # the node hung up on us first: that is one right answer


# --- strategies

def mutate(base: bytes, data: st.DataObject) -> bytes:
    buf = bytearray(base)
    for _ in range(data.draw(st.integers(1, 6), label="mutations")):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "set"]), label="op")
        if not buf:
            break
        i = data.draw(st.integers(0, len(buf) - 1), label="at")
        if op == "flip":
            buf[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del buf[i: i + data.draw(st.integers(1, 64))]
        elif op == "insert":
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=64))
        else:
            buf[i] = data.draw(st.sampled_from([0, 0xFF, 0x7F, 0x80]))
    return bytes(buf)


objects = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)

control_bodies = st.one_of(
    st.tuples(st.just("claim"), st.sampled_from(["publish", "subscribe", "call", "serve",
                                                 "set-state", "x"]),
              st.sampled_from(["pubsub", "latest", "reqrep", "state", "?"]),
              st.text(max_size=30)).map(list),
    st.tuples(st.just("node"), objects).map(list),
    st.tuples(st.just("ident"), st.lists(st.lists(objects, max_size=5), max_size=5)).map(list),
    st.tuples(st.sampled_from(["denied", "welcome", "node", "ident"]), objects).map(list),
    objects,
)


@st.composite
def frames(draw) -> bytes:
    if draw(st.booleans()):
        payload = encode_object(draw(control_bodies))
        kind = FrameKind.CONTROL
    else:
        payload = draw(st.binary(max_size=2048))
        kind = draw(st.integers(0, 20))
    return wire.encode_frame(
        kind, payload,
        tag=draw(st.integers(0, 2**32 - 1)),
        channel=draw(st.integers(0, 2**64 - 1)),
        source=draw(st.integers(0, 2**64 - 1)),
        dest=draw(st.integers(0, 2**64 - 1)),
        seq=draw(st.integers(0, 2**64 - 1)),
        hops=draw(st.integers(0, 255)),
        ext=draw(st.binary(max_size=32)),
    )


class HostileInput(SynchronousTestCase):
    figures: dict[str, int] = {}

    def setUp(self) -> None:
        self.node = node_process()
        self.addCleanup(self.node.stop)
        self.good = GoodLink(self.node.port)
        self.addCleanup(self.good.sock.close)
        self.good.ping()
        self.rss_before = self.node.rss()
        self.tried = 0

    def step(self, data: bytes) -> None:
        throw(self.node.port, data)
        self.tried += 1
        if self.tried % 50 == 0:
            self.assertIsNone(self.node.proc.poll(), "the node process died")
            self.good.ping()

    def finish(self, name: str) -> None:
        self.good.ping()
        self.assertIsNone(self.node.proc.poll(), "the node process died")
        log = self.node.text()
        self.assertNotIn("Traceback", log, log[-4000:])
        self.assertNotIn("Unhandled", log, log[-4000:])
        growth = self.node.rss() - self.rss_before
        self.assertLess(growth, MAX_RSS_GROWTH, f"node memory grew by {growth} bytes")
        # A real client still works through the node.
        result = run_cli("status", "--connect", f"tcp:127.0.0.1:{self.node.port}",
                         "--token-file", path("bob.token"), "--timeout", "20")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("target", result.stdout)
        line = (f"{name}: {self.tried} inputs, crashes 0, good link pings "
                f"{self.good.pings}, node RSS growth {growth / 1e6:.1f} MB")
        print(line)
        figures = os.environ.get("YOTONNET_HOSTILE_FIGURES")
        if figures:
            with open(figures, "a") as f:
                f.write(line + "\n")

    def test_random_bytes(self):
        @HYPOTHESIS
        @given(st.binary(max_size=4096))
        def attack(data: bytes) -> None:
            self.step(data)

        attack()
        self.finish("random bytes")

    def test_mutated_handshakes(self):
        @HYPOTHESIS
        @given(st.sampled_from(["none", "secret", "token", "password"]), st.data())
        def attack(method, data) -> None:
            self.step(mutate(blind_login(method), data))

        attack()
        self.finish("mutated handshakes")

    def test_random_frames_after_a_genuine_login(self):
        @HYPOTHESIS
        @given(st.lists(frames(), min_size=1, max_size=8), st.booleans(), st.data())
        def attack(stream, mutated, data) -> None:
            body = b"".join(stream)
            if mutated:
                body = mutate(body, data)
            peer = login(self.node.port, TOKENS["bob"])
            try:
                peer.send(body)
                peer.sock.shutdown(socket.SHUT_WR)
                peer.sock.settimeout(0.02)
                while peer.sock.recv(65536):
                    pass
            except OSError:
                pass  # the node hung up on us first: that is one right answer
            finally:
                peer.close()
            self.tried += 1
            if self.tried % 50 == 0:
                self.assertIsNone(self.node.proc.poll(), "the node process died")
                self.good.ping()

        attack()
        self.finish("frames after login")
