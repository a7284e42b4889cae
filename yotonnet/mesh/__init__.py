"""The mesh on Twisted: the Context facade, links, dialling.

:class:`~yotonnet.mesh.context.Context` is one node (its public API, the link
registry, introspection); :class:`~yotonnet.mesh.link.Link` is the protocol of
one peer connection (handshake, heartbeat, framing, producer/consumer). They
hand every decision about frames to :mod:`yotonnet.core`.
"""
