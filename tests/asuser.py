"""Run an attacker as another OS user, the way a local attacker really runs.

Loopback and unix sockets are shared by every user of a host, so the attacks
that matter there come from another account. CI and these tests run as root;
:func:`run_as_stranger` runs a stdlib-only script from ``tests/attacks`` as the
user ``nobody`` (``runuser -u nobody -- python3 ...``), after copying it with
``tests/rawwire.py`` into a world-readable folder (the checkout itself may sit
in a private home directory). It gives a Deferred of ``(exit code, stdout,
stderr)``. Where there is no second user to be (not root, no ``runuser``, no
``nobody``), :func:`stranger_unavailable` says why, for the test's skip.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue

HERE = os.path.dirname(os.path.abspath(__file__))
STRANGER = "nobody"
#: the interpreter the stranger runs (the project's may sit in a private home directory)
SYSTEM_PYTHON = "/usr/bin/python3"


def stranger_unavailable() -> str | None:
    """Why attacks cannot run as another user here, or None when they can."""
    if os.getuid() != 0:
        return "attacks as another OS user need root (to runuser -u nobody)"
    if shutil.which("runuser") is None:
        return "attacks as another OS user need runuser (util-linux)"
    try:
        pwd.getpwnam(STRANGER)
    except KeyError:
        return f"attacks as another OS user need the user {STRANGER!r}"
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"attacks as another OS user need {SYSTEM_PYTHON} (Debian's python3)"
    return None


def _staged(script: str) -> str:
    folder = tempfile.mkdtemp(prefix="yotonnet-attack-")
    os.chmod(folder, 0o755)
    for source in (os.path.join(HERE, "attacks", script), os.path.join(HERE, "rawwire.py")):
        target = os.path.join(folder, os.path.basename(source))
        shutil.copyfile(source, target)
        os.chmod(target, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
    return os.path.join(folder, script)


def run_as_stranger(script: str, *args: str, user: str = STRANGER,
                    env: dict[str, str] | None = None) -> defer.Deferred:
    """``(exit code, stdout, stderr)`` of ``python3 tests/attacks/SCRIPT ARGS`` as ``user``."""
    path = _staged(script)
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8", **(env or {})}
    d = getProcessOutputAndValue(
        shutil.which("runuser") or "runuser",
        ["-u", user, "--", SYSTEM_PYTHON, "-I", path, *args],
        env=env, path="/", reactor=reactor,
    )

    def done(result: tuple) -> tuple[int, str, str]:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)
        out, err, code = result
        return code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    return d.addCallback(done)


def spawn_as_stranger(testcase: Any, script: str, *args: str) -> Any:
    """Start the attacker as ``nobody`` and stream its output (a procs.PeerProcess whose
    ``wait_for`` gives lines as they come); the test's cleanup kills it."""
    from procs import PeerProcess

    path = _staged(script)
    testcase.addCleanup(shutil.rmtree, os.path.dirname(path), True)
    proto = PeerProcess(reactor, f"attacker {script} {' '.join(args[:1])}")
    runuser = shutil.which("runuser") or "runuser"
    reactor.spawnProcess(
        proto, runuser, [runuser, "-u", STRANGER, "--", SYSTEM_PYTHON, "-I", "-u", path, *args],
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"}, path="/",
    )
    testcase.addCleanup(proto.kill)
    return proto
