"""A ``yotonnet node`` process for the synchronous ring-3 tests, its log in a file.

:class:`LoggedNode` starts the node on a free loopback port with the token
logins of ``certs_fixture`` and a config file of the test's choosing, waits
for "ready on", and gives its log text, memory and CPU; ``stop()`` ends it
and removes its files. :func:`rss` reads any process's resident memory.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

from certs_fixture import bundle, path

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO_ROOT)


def rss(pid: int) -> int:
    """Resident memory of process ``pid`` in bytes (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return 0


class LoggedNode:
    """``yotonnet node`` named "target" on a loopback port with token logins;
    ``config``: the text of its config file."""

    def __init__(self, config: str) -> None:
        bundle()
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(config)
        self.config_path = f.name
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-c", "from yotonnet.cli import main; main()", "node",
             "--name", "target", "--listen", f"tcp:{self.port}:interface=127.0.0.1",
             "--tokens", path("tokens.txt"), "--config", self.config_path],
            stdout=self.log, stderr=subprocess.STDOUT, env=ENV, cwd=REPO_ROOT,
        )
        deadline = time.monotonic() + 30
        while "ready on" not in self.text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"node did not start:\n{self.text()[-3000:]}")
            time.sleep(0.05)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def text(self) -> str:
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def rss(self) -> int:
        return rss(self.proc.pid)

    def cpu(self) -> float:
        """User plus system CPU seconds the node process has used."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for name in (self.log.name, self.config_path):
            os.unlink(name)
