"""The eager write of yotonnet's links, for the raw Twisted baselines of the benchmarks.

:class:`EagerSend` gives an ``Int32StringReceiver`` a ``sendString`` that writes each
frame to the socket at once when Twisted holds nothing for it, as a yotonnet link does
(``yotonnet.mesh.writer.LinkWriter.write_now``), and leaves the rest to Twisted's
buffer: what the eager write alone costs, without the messaging layer.
"""

from __future__ import annotations


class EagerSend:
    """Mix in before ``Int32StringReceiver`` (or a subclass of it)."""

    transport: object

    def sendString(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        t = self.transport
        frame = len(data).to_bytes(4, "big") + data  # Int32StringReceiver's prefix
        if t._tempDataLen or t.dataBuffer:  # type: ignore[attr-defined]
            t.write(frame)  # type: ignore[attr-defined]
            return
        sent = t.socket.send(frame)  # type: ignore[attr-defined]
        if sent < len(frame):
            t.write(frame[sent:])  # type: ignore[attr-defined]
