"""The sans-IO core: everything that decides what happens to bytes and frames.

Nothing here imports Twisted (a test checks): the wire format and its
decoder, the message types and the OBJECT codec, channel names, routing
(link-state records, paths, interest), flow control (credit, holds), request
correlation, state versions, the authentication proofs of the handshake, and
the log budget. Each module is driven by plain calls and tested without a
reactor; the Twisted layers (:mod:`yotonnet.mesh` and above) feed them bytes
and carry out what they decide.
"""
