"""Each side's part in authenticating one link, between the HELLOs and ``up``.

A :class:`Link` hands its handshake frames to one of these, built by the
guard: :class:`ListenerAuth` on an accepted connection, :class:`DiallerAuth`
on a dialled one. Each returns, for every frame, ``None`` (wait for the
next), a refusal text (the link fails with it), or an :class:`Admission`.

Trust is decided here, once per link, and never inherited:

* The listener trusts (lets relay others' traffic, routing records and
  identities) a peer that proved this OS user's local secret or logged in as
  a ``nodes`` user. Anonymous peers are trusted only inside an anonymous
  mesh (``allow_anonymous`` and no logins configured anywhere on this node);
  elsewhere they are clients, gated like any other.
* The dialler trusts a listener that proved the credential it was sent
  (its welcome carries the proof) or whose TLS certificate was verified. A
  listener that proves nothing is trusted only by a context that risks
  nothing by it (one that allows anonymous peers itself, or a client that
  serves nobody and has no credentials to lose); a dialler that holds a
  credential for the peer refuses such a peer instead of talking to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from twisted.logger import Logger

from ..core import handshake, wire
from ..core.handshake import ANONYMOUS, CERTIFICATE, NONE, PASSWORD, SECRET, TOKEN, Transcript
from ..core.messages import encode_object
from . import auth, tls
from .localsecret import LocalSecretError, read_secret

if TYPE_CHECKING:
    from ..mesh.link import Link
    from .guard import Guard

log = Logger(namespace="yotonnet.security")

_CONTROL = int(wire.FrameKind.CONTROL)
#: the largest authentication message accepted
HANDSHAKE_CONTROL_FRAME = 4096


class Admission(NamedTuple):
    """The outcome of a link's authentication."""

    #: who the peer logged in as (incoming links; None for an anonymous peer)
    identity: auth.Identity | None
    #: the peer may speak for other nodes (relay traffic, records, identities)
    trusted: bool
    #: outgoing links: the user the listener took us for ("" anonymous)
    user: str | None = None


def _server_auth_problem(transport: Any) -> str | None:
    get = getattr(transport, "getPeerCertificate", None)
    cert = get() if get is not None else None
    if cert is None:
        return "no certificate"
    return tls.server_auth_problem(cert.to_cryptography())


def control(body: list) -> bytes:
    return wire.encode_frame(_CONTROL, encode_object(body))


def _message(frame: wire.Frame) -> Any:
    if frame.kind != _CONTROL:
        raise ValueError(f"expected an authentication message, got a frame of kind {frame.kind}")
    # Before authentication, a small limit: nothing in the exchange needs more.
    return wire.decode_control(frame.payload, HANDSHAKE_CONTROL_FRAME)


class ListenerAuth:
    """The accepting side: announce what it takes, check the proof, prove back."""

    def __init__(self, guard: Guard, link: Link) -> None:
        self.guard = guard
        self.link = link
        self.nonce = handshake.new_nonce()
        self.accepts = guard.accepted_methods()
        self.dialler_nonce = ""
        self.user = ""  # of a password login, between challenge and proof

    def hello_extra(self) -> dict[str, Any]:
        return {"nonce": self.nonce, "accepts": list(self.accepts)}

    def transcript(self, method: str) -> Transcript:
        link = self.link
        return Transcript(
            method, self.dialler_nonce, self.nonce, link.peer_id, link.context.node_id
        )

    def on_hello(self, hello: wire.Hello) -> str | None:
        try:
            self.dialler_nonce = handshake.check_nonce(hello.extra.get("nonce"))
        except ValueError as e:
            return f"{e} (is the peer a yotonnet 2 node?)"
        return None

    def on_frame(self, frame: wire.Frame) -> Admission | str | None:
        try:
            message = handshake.parse_auth(_message(frame))
        except Exception as e:  # noqa: BLE001 - whatever it is, it is not an auth message
            return f"malformed authentication message: {e}"
        method, value = message
        if method == PASSWORD:
            if self.user or PASSWORD not in self.accepts:
                return self.guard.ways_in(f"{method} logins are not accepted here")
            self.user = value
            checker = self.guard.password_checker
            assert checker is not None
            self.link.write_handshake(control(handshake.challenge_message(
                checker.challenge(value)
            )))
            return None
        if method == "password-proof":
            if not self.user:
                return "a password proof came before the password challenge"
            return self._login(PASSWORD, auth.PasswordProof(
                self.user, self.transcript(PASSWORD), value
            ))
        if method == NONE:
            return self._anonymous(None)
        if method not in self.accepts:
            return self.guard.ways_in(f"{method} logins are not accepted here")
        if method == SECRET:
            return self._login(method, auth.SecretProof(self.transcript(method), value))
        if method == TOKEN:
            return self._login(method, auth.TokenProof(self.transcript(method), value))
        name = tls.peer_certificate_name(self.link.transport)
        if not name:
            return "certificate login without a verified TLS client certificate"
        return self._login(CERTIFICATE, auth.CertificateCredentials(name))

    def _login(self, method: str, credentials: Any) -> Admission | str:
        guard = self.guard
        result = auth.login(guard.portal, credentials, method)
        if isinstance(result, str):
            if method == SECRET:
                # Another user's node, or a stale secret: anonymous if allowed at all.
                return self._anonymous(result)
            guard.count_failure(self.link, result)
            return result
        refusal = guard.check_new_peer(self.link, result)
        if refusal:
            return refusal
        if method == CERTIFICATE and result.node:
            problem = _server_auth_problem(self.link.transport)
            if problem:
                # A mesh node relays for others: its certificate must be a node's (a
                # user's certificate named like a node must not make its holder one).
                return f"certificate of node user {result.user!r} refused: {problem}"
        self.link.write_handshake(control(handshake.welcome_message(
            handshake.Welcome(result.user, credentials.listener_proof())
        )))
        return Admission(result, result.node)

    def _anonymous(self, failed: str | None) -> Admission | str:
        guard = self.guard
        if ANONYMOUS not in self.accepts:
            why = failed or "authentication required"
            guard.count_failure(self.link, why)
            return guard.ways_in(why)
        trusted = guard.security.anonymous_mesh
        identity = None if trusted else auth.Identity("anonymous", method=ANONYMOUS)
        self.link.write_handshake(control(handshake.welcome_message(handshake.Welcome("", ""))))
        return Admission(identity, trusted)


class DiallerAuth:
    """The dialling side: prove the best credential the listener takes, then insist that
    the listener proves it back before trusting it with anything."""

    def __init__(self, guard: Guard, link: Link) -> None:
        self.guard = guard
        self.link = link
        self.nonce = handshake.new_nonce()
        self.method = ""
        self.listener_nonce = ""
        self.expected = ""  # the listener proof that would show it knows our credential
        self.salted: Any = None

    def hello_extra(self) -> dict[str, Any]:
        return {"nonce": self.nonce}

    def transcript(self, method: str) -> Transcript:
        link = self.link
        return Transcript(method, self.nonce, self.listener_nonce, link.context.node_id,
                          link.peer_id)

    def on_hello(self, hello: wire.Hello) -> str | None:
        try:
            self.listener_nonce = handshake.check_nonce(hello.extra.get("nonce"))
        except ValueError as e:
            return f"{e} (is the peer a yotonnet 2 node?)"
        accepts = hello.extra.get("accepts")
        if not isinstance(accepts, list) or not all(isinstance(a, str) for a in accepts):
            return "the peer's HELLO does not say how it authenticates ('accepts')"
        creds = self.guard.security.dial_credentials()
        tls_link = tls.is_tls(self.link.endpoint_text)
        method = NONE
        if creds.token is not None:
            method = TOKEN
        elif creds.user is not None:
            method = PASSWORD
        elif tls_link and self.guard.security.tls_cert and CERTIFICATE in accepts:
            method = CERTIFICATE
        elif SECRET in accepts:
            secret = self._secret()
            if secret is not None:
                method = SECRET
                t = self.transcript(SECRET)
                self.expected = handshake.key_proof(secret, t, "listener")
                self.link.write_handshake(control(
                    ["auth", SECRET, handshake.key_proof(secret, t, "dialler")]
                ))
                self.method = method
                return None
        if method in (TOKEN, PASSWORD) and not tls_link:
            self.guard.warn_plain_credentials(self.link, method)
        if method in (TOKEN, PASSWORD) and method not in accepts:
            return (
                f"the peer does not check {method}s (it accepts: {', '.join(accepts) or 'none'})"
                f", so it cannot prove it is the node your {method} is for; nothing was sent"
            )
        self.method = method
        if method == TOKEN:
            key = auth.token_key(creds.token)  # type: ignore[arg-type]
            t = self.transcript(TOKEN)
            self.expected = handshake.key_proof(key, t, "listener")
            proof = handshake.key_proof(key, t, "dialler")
            self.link.write_handshake(control(["auth", TOKEN, proof]))
        elif method == PASSWORD:
            self.link.write_handshake(control(["auth", PASSWORD, creds.user]))
        else:
            self.link.write_handshake(control(["auth", method]))
        return None

    def _secret(self) -> bytes | None:
        try:
            return read_secret(self.guard.security.secret_file)
        except LocalSecretError as e:
            log.warn("{node}: not using the local secret: {why}", node=self.guard.ctx.name,
                     why=str(e))
            return None

    def on_frame(self, frame: wire.Frame) -> Admission | str | None:
        try:
            message = _message(frame)
            kind = message[0] if isinstance(message, list) and message else None
            if kind == "challenge" and self.method == PASSWORD and self.salted is None:
                return self._answer_challenge(handshake.parse_challenge(message))
            welcome = handshake.parse_welcome(message)
        except Exception as e:  # noqa: BLE001 - whatever it is, it is not what we wait for
            return f"expected the peer's welcome after the HELLO (or an ERROR frame): {e}"
        return self._welcomed(welcome)

    def _answer_challenge(self, challenge: handshake.Challenge) -> None:
        creds = self.guard.security.dial_credentials()
        assert creds.user is not None and creds.password is not None
        self.salted = handshake.salted_password(
            creds.password.encode("utf-8", "surrogatepass"), challenge.salt, challenge.n,
            challenge.r, challenge.p,
        )
        proof, self.expected = handshake.client_password_proof(
            self.salted, challenge, self.transcript(PASSWORD), creds.user
        )
        self.link.write_handshake(control(["auth", "password-proof", proof]))
        return None

    def _welcomed(self, welcome: handshake.Welcome) -> Admission | str:
        method = self.method
        if method == PASSWORD and self.salted is None:
            return "the peer welcomed a password login without asking for the password"
        proved = bool(self.expected) and welcome.proof != "" and handshake.same(
            welcome.proof, self.expected
        )
        if method in (TOKEN, PASSWORD) and not proved:
            return (
                f"the peer accepted the {method} but could not prove it knows it, so it is not "
                "the node you meant (something else may hold its address); nothing more was "
                "sent to it"
            )
        if method == SECRET and welcome.user and not proved:
            return (
                "the peer accepted the local secret but could not prove it knows it, so it is "
                "not one of this user's nodes (something else may hold its address)"
            )
        proven = proved or tls.is_tls(self.link.endpoint_text)
        if proven:
            return Admission(None, True, welcome.user)
        refusal = self.guard.refuse_unproven(self.link)
        if refusal:
            return refusal
        return Admission(None, True, welcome.user)
