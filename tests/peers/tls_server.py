"""A bare TLS server for the impersonation tests (tests/test_tls_roles.py).

Usage::

    python -u tls_server.py CERT KEY

It listens on an ephemeral port of 127.0.0.1 with the certificate CERT and its
key KEY, prints ``READY <port>``, and then ``CONNECTED`` for each TCP
connection and ``LOST <reason as JSON>`` when one ends. It speaks nothing over
TLS: a yotonnet node dialling it must refuse it in the TLS handshake, before
any yotonnet frame. It stops by itself if its parent goes away.
"""

from __future__ import annotations

import json
import sys

from peer import watch_parent  # the peers' one parent check (this script's folder)
from twisted.internet import defer, protocol, ssl, task
from twisted.internet.endpoints import SSL4ServerEndpoint


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Silent(protocol.Protocol):
    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        emit("CONNECTED")

    def connectionLost(self, reason: object = None) -> None:  # noqa: N802
        emit(f"LOST {json.dumps(getattr(reason, 'getErrorMessage', lambda: '')())}")


async def run(reactor, cert_path: str, key_path: str) -> None:
    with open(cert_path, "rb") as f, open(key_path, "rb") as g:
        identity = ssl.PrivateCertificate.loadPEM(f.read() + b"\n" + g.read())
    endpoint = SSL4ServerEndpoint(reactor, 0, identity.options(), interface="127.0.0.1")
    port = await endpoint.listen(protocol.Factory.forProtocol(Silent))
    emit(f"READY {port.getHost().port}")
    await defer.Deferred()  # serve until killed


def main() -> None:
    cert_path, key_path = sys.argv[1:3]

    def start(reactor):
        watch_parent(reactor)
        return defer.ensureDeferred(run(reactor, cert_path, key_path))

    task.react(start)


if __name__ == "__main__":
    main()
