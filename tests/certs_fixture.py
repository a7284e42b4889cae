"""Certificates and credential files for the security tests, made once per test run.

:func:`bundle` returns a directory (removed at exit) holding a development CA
(``ca.pem``) and, each as ``NAME.pem`` and ``NAME.key`` signed by that CA:

- node certificates ``a`` and ``b`` (serverAuth and clientAuth), valid for
  their names and for ``localhost``, ``127.0.0.1`` and ``::1``, which the
  tests dial;
- node certificate ``hub`` for ``hub.example`` only;
- user certificate ``alice`` (clientAuth only, no subjectAltName);
- ``mallory``: a user certificate crafted to carry subjectAltName
  ``DNS:hub.example``, which ``yotonnet certs`` never makes, so that only the
  serverAuth check can stop it posing as the hub;
- ``noeku``: a certificate for ``hub.example`` without extendedKeyUsage;
- ``nosan``: a node certificate WITHOUT subjectAltName;

and ``stranger``, a node certificate from another CA, plus token and password
files for users ``alice``, ``bob`` and the node user ``b``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from yotonnet.security import certs
from yotonnet.security.auth import hash_password

TOKENS = {"alice": "alice-token-0123456789abcdef", "bob": "bob-token-0123456789abcdef",
          "carol": "carol-token-0123456789abcdef", "eve": "eve-token-0123456789abcdef",
          "tmuxer": "tmuxer-token-0123456789abcdef", "kernel": "kernel-token-0123456789abcdef",
          "b": "node-b-token-0123456789abcdef"}
PASSWORDS = {"carol": "correct horse battery staple"}
#: the names the loopback tests dial nodes a and b by
LOOPBACK = ("localhost", "127.0.0.1", "::1")
#: the name the hub is dialled by in the impersonation tests
HUB = "hub.example"

_dir: str | None = None


def bundle() -> str:
    global _dir
    if _dir is not None:
        return _dir
    d = tempfile.mkdtemp(prefix="yotonnet-certs-")
    atexit.register(shutil.rmtree, d, True)
    certs.write_bundle(d, {"a": LOOPBACK, "b": LOOPBACK, "hub": [HUB]}, ["alice"])
    ca, _ = certs.load_or_make_ca(d)
    certs.write_pair(d, "mallory", certs.issue(ca, "mallory", certs.USER_USAGES, [HUB]))
    certs.write_pair(d, "noeku", certs.issue(ca, "noeku", None, [HUB]))
    certs.write_pair(d, "nosan", certs.issue(ca, "nosan", certs.NODE_USAGES, ()))
    stranger_ca = certs.make_ca("another CA")
    certs.write_pair(d, "stranger", certs.make_node_cert(stranger_ca, "stranger", LOOPBACK))
    with open(os.path.join(d, "tokens.txt"), "w") as f:
        f.write("# user token\n")
        for user, token in TOKENS.items():
            f.write(f"{user} {token}\n")
    with open(os.path.join(d, "passwords.txt"), "w") as f:
        for user, password in PASSWORDS.items():
            f.write(f"{user}:{hash_password(password)}\n")
    for user, token in TOKENS.items():
        with open(os.path.join(d, f"{user}.token"), "w") as f:
            f.write(token + "\n")
    _dir = d
    return d


def path(name: str) -> str:
    return os.path.join(bundle(), name)


# --- helpers shared by the security tests


def wait_until(predicate, timeout: float = 10.0, what: str = "condition"):
    """A Deferred that fires once ``predicate()`` is true, or fails after ``timeout`` s."""
    from twisted.internet import defer
    from waits import until

    return defer.ensureDeferred(until(predicate, what, timeout))


class LogCapture:
    """Collects formatted twisted.logger events while installed (a test's cleanup removes it)."""

    def __init__(self, testcase) -> None:
        from twisted.logger import globalLogPublisher

        self.lines: list[str] = []
        globalLogPublisher.addObserver(self)
        testcase.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event) -> None:
        from twisted.logger import formatEvent

        self.lines.append(formatEvent(event))

    def matching(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]
