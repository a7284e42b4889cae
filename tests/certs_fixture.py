"""Certificates and credential files for the security tests, made once per test run.

:func:`bundle` returns a directory (removed at exit) holding a development CA
(``ca.pem``), node certificates with subjectAltNames (``a``, ``b``, ``alice``:
``NAME.pem`` and ``NAME.key``), a certificate WITHOUT subjectAltName signed by
the same CA (``nosan.pem``/``nosan.key``), a certificate from another CA
(``stranger``), and token and password files for users ``alice``, ``bob`` and
the node user ``b``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from yotonnet import certs
from yotonnet.auth import hash_password

TOKENS = {"alice": "alice-token-0123456789abcdef", "bob": "bob-token-0123456789abcdef",
          "b": "node-b-token-0123456789abcdef"}
PASSWORDS = {"carol": "correct horse battery staple"}

_dir: str | None = None


def bundle() -> str:
    global _dir
    if _dir is not None:
        return _dir
    d = tempfile.mkdtemp(prefix="yotonnet-certs-")
    atexit.register(shutil.rmtree, d, True)
    certs.write_bundle(d, ["a", "b", "alice"])
    with open(os.path.join(d, "ca.pem"), "rb") as f, open(os.path.join(d, "ca.key"), "rb") as g:
        ca = certs.Issued(f.read(), g.read())
    nosan = certs.make_cert(ca, "nosan", with_sans=False)
    _write(d, "nosan", nosan)
    stranger_ca = certs.make_ca("another CA")
    _write(d, "stranger", certs.make_cert(stranger_ca, "stranger"))
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


def _write(d: str, name: str, issued: certs.Issued) -> None:
    with open(os.path.join(d, f"{name}.pem"), "wb") as f:
        f.write(issued.cert_pem)
    with open(os.path.join(d, f"{name}.key"), "wb") as f:
        f.write(issued.key_pem)


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
