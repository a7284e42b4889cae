"""Real test hosts: Linux network namespaces joined by veth pairs on one bridge.

Each host gets its own namespace, its own address in 10.77.<net>.0/24 and a
veth whose bridge end can be set down to cut the host off and up to heal it.
Everything is created by :meth:`TestHosts.create` and removed by
:meth:`TestHosts.destroy`; names carry the test run's pid so that parallel or
crashed runs do not collide.

Besides cutting a host off (:meth:`TestHosts.cut`), one pair of hosts can lose
each other while both keep talking to the rest: :meth:`TestHosts.silence`
(every packet between them vanishes, as with a pulled cable: nobody is told)
and :meth:`TestHosts.reset` (their TCP connections are reset).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess

#: a MAC address no host has (locally administered): frames sent to it are lost
NOBODY_MAC = "02:00:00:00:de:ad"

#: why namespace tests cannot run here, or None when they can
UNAVAILABLE: str | None = None
if not hasattr(os, "geteuid") or os.geteuid() != 0:
    UNAVAILABLE = "network namespaces need root (CI runs as root)"
elif shutil.which("ip") is None:
    UNAVAILABLE = "the 'ip' command (Debian package iproute2) is not installed"


def _ip(*args: str, netns: str | None = None) -> None:
    cmd = ["ip"] + (["netns", "exec", netns, "ip"] if netns else []) + list(args)
    subprocess.run(cmd, check=True, capture_output=True, text=True)


_SERIAL = itertools.count()


class TestHosts:
    """N hosts on one bridge; ``address(i)``, ``exec_prefix(i)``, ``cut(i)``, ``heal(i)``."""

    __test__ = False  # not a test case, whatever pytest thinks of the name

    def __init__(self, count: int, net: int = 77) -> None:
        # Unique per instance, not only per process: a test's hosts may linger briefly
        # (a process still inside a namespace keeps its interfaces) when the next one starts.
        tag = f"{os.getpid() % 100000}{next(_SERIAL) % 100:02d}"
        self.count = count
        self.net = net
        self.bridge = f"ytb{tag}"
        self.names = [f"ytn{tag}h{i}" for i in range(count)]
        self._veths = [f"ytv{tag}h{i}" for i in range(count)]
        self._created: list[str] = []

    def address(self, i: int) -> str:
        return f"10.{self.net}.0.{i + 1}"

    def exec_prefix(self, i: int) -> list[str]:
        """Prefix a command with this to run it on host ``i``."""
        return ["ip", "netns", "exec", self.names[i]]

    def create(self) -> None:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._created.append("bridge")
            _ip("link", "set", self.bridge, "up")
            for i, (ns, veth) in enumerate(zip(self.names, self._veths, strict=True)):
                _ip("netns", "add", ns)
                self._created.append(ns)
                _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _ip("link", "set", veth, "master", self.bridge)
                _ip("link", "set", veth, "up")
                _ip("addr", "add", f"{self.address(i)}/24", "dev", "eth0", netns=ns)
                _ip("link", "set", "eth0", "up", netns=ns)
                _ip("link", "set", "lo", "up", netns=ns)
        except subprocess.CalledProcessError as e:
            self.destroy()
            raise RuntimeError(f"could not create test hosts: {e.stderr.strip()}") from None

    def cut(self, i: int) -> None:
        """Take host ``i`` off the network (its sockets stay open, packets stop)."""
        _ip("link", "set", self._veths[i], "down")

    def heal(self, i: int) -> None:
        _ip("link", "set", self._veths[i], "up")

    def silence(self, i: int, j: int) -> None:
        """Cut hosts ``i`` and ``j`` apart, both ways, telling neither: each resolves the
        other's address to a MAC address nobody has (a permanent neighbour entry), so
        their packets leave, cross the bridge and are dropped by every host that sees
        them. Sockets stay open with no error, even a soft one (a blackhole route would
        set one on the socket), and TCP retransmits with its usual backoff, as over a
        pulled cable; the rest of the network is untouched. :meth:`unsilence` undoes it."""
        for a, b in ((i, j), (j, i)):
            _ip("neigh", "replace", self.address(b), "lladdr", NOBODY_MAC, "nud", "permanent",
                "dev", "eth0", netns=self.names[a])

    def unsilence(self, i: int, j: int) -> None:
        """Undo :meth:`silence`: the neighbours are looked up again (ARP), and each
        connection flows at its next TCP retransmission (up to its backoff later)."""
        for a, b in ((i, j), (j, i)):
            _ip("neigh", "del", self.address(b), "dev", "eth0", netns=self.names[a])

    def reset(self, i: int, j: int) -> int:
        """Reset every TCP connection between hosts ``i`` and ``j`` (``ss -K`` in host
        ``i``: its sockets are aborted and ``j`` gets an RST); how many were."""
        out = subprocess.run(
            ["ip", "netns", "exec", self.names[i], "ss", "-K", "-t", "-n", "dst",
             self.address(j)], check=True, capture_output=True, text=True,
        ).stdout
        return sum(1 for line in out.splitlines() if line.startswith("ESTAB"))

    def destroy(self) -> None:
        for ns in self.names:
            if ns in self._created:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        if "bridge" in self._created:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        self._created.clear()
