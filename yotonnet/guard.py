"""The guard: a context's security at run time (admission, gates, identities, denials).

One :class:`Guard` per :class:`~yotonnet.context.Context`, built from its
:class:`~yotonnet.security.Security`. It does four jobs, all at the edge of
the mesh so that forwarding between trusted nodes costs nothing extra:

**Admission** (at the handshake). An outgoing link is trusted: we chose the
endpoint, and on TLS its certificate proved the name. An incoming link is
authenticated through the twisted.cred portal (:mod:`yotonnet.auth`); a
peer whose user is listed in ``nodes`` is a trusted mesh node, any other
user is a *client*. Without configured authentication only local peers
(loopback, unix sockets, in-process) are accepted, and they are trusted as
today. A refusal is an ERROR frame naming the problem, then a disconnect.

**Gates** (client links only). A client may only speak for itself (every
frame's source is its own node id) and only on channels it *claimed* and was
granted: a client context sends ``["claim", operation, pattern, name]`` for
each channel it opens, before its routing record; the first node checks the
name against the :class:`~yotonnet.authz.Policy` and answers a refusal with
``["denied", operation, name, text]``. Frames on channels not granted are
dropped (counted, logged once, answered with the same denial); a denied call
is answered with a REPLY of status ``REPLY_DENIED``, which the caller raises
as :class:`~yotonnet.errors.PermissionDenied`. The client's routing record
keeps only granted interests and its link to this node. Limits: claimed
channels per link, requests pending per link.

**Identities.** The header's ``source`` node id is the stamp: the first node
guarantees it for clients, and binds it to the authenticated user in an
``["ident", [[node, user, version, origin], ...]]`` control message flooded
to every link before anything the client sends; bindings are accepted only
from trusted links (newest version wins), so a client cannot forge one.
:mod:`yotonnet.identity` reads them for applications.

**Denials on the client side.** A ``denied`` message from a node we dialled
marks our channels of that name: ``send()``/``call()``/``recv()`` then
raise :class:`~yotonnet.errors.PermissionDenied` naming channel and
operation, and the channel's ``denied`` attribute holds the error.
"""

from __future__ import annotations

import ipaddress
import struct
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import auth, tls, wire
from .authz import CALL, OPERATIONS, PUBLISH, SERVE, SET_STATE, SUBSCRIBE
from .errors import PermissionDenied, ProtocolError
from .messages import decode_object, encode_object
from .names import channel_id, validate_channel_name
from .routing import REP, STATE, SUB, NodeState
from .security import Security, SecurityError
from .wire import HEADER, HEADER_SIZE, HEADER_TAIL, REPLY_DENIED, REPLY_ERROR, FrameKind

if TYPE_CHECKING:
    from .context import Context
    from .link import Link

log = Logger(namespace="yotonnet.security")

CAPABILITY = "authz-1"
_DATA = int(FrameKind.DATA)
_REPLY = int(FrameKind.REPLY)
_CONTROL = int(FrameKind.CONTROL)
_SEQ = struct.Struct("<Q")
#: which patterns each operation may claim
_PATTERNS = {
    PUBLISH: ("pubsub",),
    SUBSCRIBE: ("pubsub", "latest", "state"),
    CALL: ("reqrep",),
    SERVE: ("reqrep",),
    SET_STATE: ("state",),
}
#: denials one client link is told about (a hostile one could ask for endless ones)
_MAX_DENIALS_TOLD = 256
_MAX_SECRET = 4096


def is_local(address: Any) -> bool:
    """Loopback IP, unix socket or in-process transport: a peer on this machine."""
    if isinstance(address, IPv4Address | IPv6Address):
        try:
            ip = ipaddress.ip_address(address.host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_loopback
    return True  # UNIXAddress, memory transports: nothing reaches them over a network


class LinkGate:
    """What one client link was granted, and its enforcement (see the module doc)."""

    def __init__(self, guard: Guard, link: Link, identity: auth.Identity) -> None:
        self.guard = guard
        self.link = link
        self.identity = identity
        self.grants: dict[str, set[int]] = {op: set() for op in OPERATIONS}
        self.names: dict[int, str] = {}
        self.claimed: set[int] = set()
        self.told: set[tuple[str, int]] = set()
        #: request id -> when we stop counting it as pending
        self.pending: dict[int, float] = {}
        self.dropped = 0

    # --- installed on the link

    def install(self) -> None:
        link = self.link
        ctx = self.guard.ctx
        handlers = dict(link._handlers)
        gated = {
            FrameKind.DATA: lambda lk, f: self.on_run(lk, [f], 0, 1) and None,
            FrameKind.REQUEST: self.on_request,
            FrameKind.REPLY: self.on_reply,
            FrameKind.STATE: self.on_state,
            FrameKind.CONTROL: self.on_control,
        }
        latest = getattr(FrameKind, "LATEST", None)
        for kind, handler in ctx._frame_handlers.items():
            if kind in gated:
                handlers[kind] = gated[kind]
            elif kind == latest:
                handlers[kind] = self._publish_gate(handler)
            elif kind != FrameKind.CREDIT:
                # A kind added later: at least the client may speak only for itself.
                handlers[kind] = self._own_only(handler)
        link._handlers = handlers
        link._on_run = self.on_run
        self._ctx_run = ctx._on_data_run
        send = link.send

        def counting_send(data: bytes) -> None:
            # A reply to one of the client's requests ends it (replies go out one per send).
            if self.pending and data[4] == _REPLY and len(data) >= HEADER_SIZE:
                self.pending.pop(_SEQ.unpack_from(data, 36)[0], None)
            send(data)

        link.send = counting_send  # type: ignore[method-assign]

    def on_run(self, link: Link, frames: list[wire.Frame], i: int, n: int) -> int:
        first = frames[i]
        channel, source = first[3], first[4]
        if source == link.peer_id and channel in self.grants[PUBLISH]:
            return self._ctx_run(link, frames, i, n)
        j = i + 1
        while j < n:
            f = frames[j]
            if f[0] != _DATA or f[3] != channel or f[4] != source:
                break
            j += 1
        self._refuse(PUBLISH, channel, source, wire.count_frames(frames, i, j))
        return j

    def _publish_gate(self, handler: Any) -> Any:
        def gate(link: Link, frame: wire.Frame) -> None:
            if frame.source == link.peer_id and frame.channel in self.grants[PUBLISH]:
                handler(link, frame)
            else:
                self._refuse(PUBLISH, frame.channel, frame.source, 1)

        return gate

    def _own_only(self, handler: Any) -> Any:
        def gate(link: Link, frame: wire.Frame) -> None:
            if frame.source == link.peer_id:
                handler(link, frame)
            else:
                self._refuse("send", frame.channel, frame.source, 1)

        return gate

    def on_request(self, link: Link, frame: wire.Frame) -> None:
        _, _, _, channel, source, _, req_id, _, _ = frame
        if source != link.peer_id:
            self._refuse(CALL, channel, source, 1)
            return
        if channel not in self.grants[CALL]:
            self._refuse(CALL, channel, source, 1)
            self._reply(frame, REPLY_DENIED, self._denial_text(CALL, channel).encode())
            return
        limit = self.guard.security.max_pending_per_link
        if len(self.pending) >= limit:
            now = self.guard.ctx.reactor.seconds()
            for rid, until in list(self.pending.items()):
                if until <= now:
                    del self.pending[rid]
            if len(self.pending) >= limit:
                text = (
                    f"more than {limit} requests pending on this link (max_pending_per_link); "
                    "wait for replies before sending more"
                )
                self.guard.breach(link, "max_pending_per_link", text)
                self._reply(
                    frame, REPLY_ERROR, encode_object(["LimitExceeded", text, ""])
                )
                return
        # Counted until its reply passes back through this link, or the longest time a
        # reply could still matter (the caller's own timeout is at most this in practice).
        ctx = self.guard.ctx
        self.pending[req_id] = ctx.reactor.seconds() + max(ctx.config.request_timeout, 60.0)
        ctx._on_request(link, frame)

    def on_reply(self, link: Link, frame: wire.Frame) -> None:
        if frame.source != link.peer_id or frame.channel not in self.grants[SERVE]:
            self._refuse(SERVE, frame.channel, frame.source, 1)
            return
        self.guard.ctx._on_reply(link, frame)

    def on_state(self, link: Link, frame: wire.Frame) -> None:
        if frame.source != link.peer_id or frame.channel not in self.grants[SET_STATE]:
            self._refuse(SET_STATE, frame.channel, frame.source, 1)
            return
        self.guard.ctx._on_state(link, frame)

    def on_control(self, link: Link, frame: wire.Frame) -> None:
        ctx = self.guard.ctx
        try:
            message = decode_object(frame.payload)
            kind = message[0]
        except Exception as e:  # noqa: BLE001 - any decoding problem is the peer's fault
            raise ProtocolError(f"malformed control message: {e}") from None
        if kind == "claim":
            self.claim(message)
        elif kind == "node":
            try:
                state = NodeState.from_wire(message[1])
            except (ValueError, IndexError) as e:
                raise ProtocolError(f"malformed node record: {e}") from None
            if state.node_id != link.peer_id:
                self.dropped += 1  # a client speaks for itself only
                return
            # Only its link to us (no transit through a client) and granted interests.
            state.links = {n: c for n, c in state.links.items() if n == ctx.node_id}
            state.interests = {
                ch: i for ch, i in state.interests.items() if self._may_hold(ch, i.role)
            }
            ctx._on_control(
                link, frame._replace(payload=encode_object(["node", state.to_wire()]))
            )
        else:
            ctx.counters["control_in"] += 1  # identities from a client are not believed

    # --- claims and refusals

    def claim(self, message: list) -> None:
        try:
            _, op, pattern, name = message
            if op not in OPERATIONS or pattern not in _PATTERNS[op]:
                raise ValueError(f"operation {op!r} cannot be claimed on pattern {pattern!r}")
            name = validate_channel_name(name)
        except (ValueError, TypeError) as e:
            raise ProtocolError(f"malformed claim: {e}") from None
        ids = {channel_id(pattern, name)}
        if op == PUBLISH:
            ids.add(channel_id("latest", name))  # the same messages, to latest subscribers
        granted = self.grants[op]
        if ids <= granted:
            return
        limit = self.guard.security.max_channels_per_link
        if len(self.claimed | ids) > limit:
            text = (
                f"more than {limit} channels on this link (max_channels_per_link); "
                f"cannot {op} on channel {name!r}"
            )
            self.guard.breach(self.link, "max_channels_per_link", text)
            self._tell(op, name, text)
            return
        for chan in ids:
            self.names[chan] = name
        policy = self.guard.policy
        if policy.allows(self.identity, op, name):
            granted |= ids
            self.claimed |= ids
        else:
            text = policy.denial(self.identity, op, name)
            self.guard.counters["denied"] += 1
            log.info("{peer}: {text}", peer=self.link.describe(), text=text)
            self._tell(op, name, text)

    def _may_hold(self, channel: int, role: str) -> bool:
        if role == SUB:
            return channel in self.grants[SUBSCRIBE]
        if role == REP:
            return channel in self.grants[SERVE]
        if role == STATE:
            return channel in self.grants[SUBSCRIBE] or channel in self.grants[SET_STATE]
        return False

    def _denial_text(self, op: str, channel: int) -> str:
        name = self.names.get(channel)
        if name is None:
            return (
                f"permission denied: user {self.identity.user!r} may not {op} on channel "
                f"{channel:016x}, which it never claimed (open channels with yotonnet's API)"
            )
        return self.guard.policy.denial(self.identity, op, name)

    def _refuse(self, op: str, channel: int, source: int, count: int) -> None:
        self.dropped += count
        self.guard.counters["denied_frames"] += count
        if source != self.link.peer_id:
            key = ("source", 0)
            text = (
                f"frame with source {source:016x} dropped: a client link may only send its "
                "own messages"
            )
        else:
            key = (op, channel)
            text = self._denial_text(op, channel)
        if key in self.told or len(self.told) >= _MAX_DENIALS_TOLD:
            return
        self.told.add(key)
        log.warn("{peer}: {text}", peer=self.link.describe(), text=text)
        if key[0] != "source":
            self._tell(op, self.names.get(channel, f"{channel:016x}"), text)

    def _tell(self, op: str, name: str, text: str) -> None:
        self.link.send(_control(["denied", op, name, text]))

    def _reply(self, frame: wire.Frame, status: int, payload: bytes) -> None:
        ctx = self.guard.ctx
        self.link.send(
            HEADER.pack(
                HEADER_TAIL + len(payload), _REPLY, 1, 0, status,
                frame.channel, ctx.node_id, frame.source, frame.seq,
            )
            + payload
        )


class Guard:
    """A context's security at run time; see the module docstring."""

    def __init__(self, context: Context, security: Security) -> None:
        self.ctx = context
        self.security = security
        self.policy = security.policy()
        self.portal: Portal | None = None
        if security.authenticates:
            checkers: list[Any] = []
            try:
                if security.tokens:
                    checkers.append(auth.TokenFileChecker(security.tokens))
                if security.passwords:
                    checkers.append(auth.PasswordFileChecker(security.passwords, context.reactor))
            except ValueError as e:
                raise SecurityError(str(e)) from None
            if security.cert_auth and security.tls_ca:
                checkers.append(auth.CertificateChecker())
            self.portal = Portal(auth.Realm(security.roles, security.nodes), checkers)
            context.capabilities = (*context.capabilities, CAPABILITY)
        security.hello_credentials()  # a missing or empty secret file fails here, not later
        #: node id -> (user, version, origin node)
        self.idents: dict[int, tuple[str, int, int]] = {}
        #: (operation, channel name) -> the denial a node sent us
        self.denials: dict[tuple[str, str], PermissionDenied] = {}
        self._opened: dict[str, weakref.WeakSet] = {}
        self.handshaking = 0
        self.counters = {
            "auth_ok": 0, "auth_failed": 0, "refused_links": 0, "denied": 0,
            "denied_frames": 0, "limit_breaches": 0, "idents": 0,
        }
        self._ctx_control = context._frame_handlers[FrameKind.CONTROL]
        context._frame_handlers[FrameKind.CONTROL] = self._on_control

    # --- endpoints

    def server_endpoint(self, endpoint: str) -> Any:
        if tls.is_tls(endpoint):
            return tls.server_endpoint(self.ctx.reactor, endpoint, self.security.tls_files())
        return serverFromString(self.ctx.reactor, endpoint)

    def client_endpoint(self, endpoint: str) -> Any:
        if tls.is_tls(endpoint):
            return tls.client_endpoint(self.ctx.reactor, endpoint, self.security.tls_files())
        return clientFromString(self.ctx.reactor, endpoint)

    def listening(self, where: str) -> None:
        """Log who may link on a new listener (the operator should know)."""
        sec = self.security
        if sec.authenticates:
            ways = [w for w, on in (
                ("tokens", sec.tokens), ("passwords", sec.passwords),
                ("TLS client certificates", sec.cert_auth and sec.tls_ca),
            ) if on]
            log.info(
                "{node} on {where}: peers must authenticate ({ways})",
                node=self.ctx.name, where=where, ways=", ".join(ways),
            )
        elif sec.allow_anonymous:
            log.warn(
                "{node} on {where}: NO authentication and allow_anonymous is set: any peer "
                "that reaches this address joins the mesh", node=self.ctx.name, where=where,
            )
        else:
            log.info(
                "{node} on {where}: no authentication configured, so only loopback and "
                "unix-socket peers are accepted", node=self.ctx.name, where=where,
            )

    # --- admission

    def hello_extra(self, link: Link) -> dict[str, Any]:
        if not link.outgoing:
            return {}
        creds = self.security.hello_credentials()
        return {"auth": creds} if creds else {}

    def refuse_connection(self) -> str | None:
        """Before any byte: too many connections still shaking hands?"""
        if self.handshaking >= self.security.max_links:
            self.counters["refused_links"] += 1
            return f"{self.handshaking} connections are still shaking hands (max_links)"
        return None

    def admit(self, link: Link, credentials: Any) -> str | None | defer.Deferred[str | None]:
        """Authenticate an incoming peer: None to admit it, else the refusal text, or a
        Deferred firing with one of those while a password check runs in a thread."""
        link.identity = None
        link.gate = None
        sec = self.security
        ctx = self.ctx
        if len(ctx.links) >= sec.max_links and link.peer_id not in ctx.links:
            return self.breach(
                link, "max_links",
                f"this node has {len(ctx.links)} links, its max_links; link to another node",
            )
        if link.outgoing:
            return None
        if not sec.authenticates:
            if sec.allow_anonymous or is_local(link.transport.getPeer()):
                return None
            self.counters["refused_links"] += 1
            return (
                f"this node has no authentication configured, so it accepts links only from "
                f"loopback and unix-socket peers, and {link.peer_address} is neither; configure "
                "tokens, passwords or TLS client certificates on the node ([security] table) "
                "and credentials on the peer"
            )
        creds, method = self._credentials(link, credentials)
        if isinstance(creds, str):
            self.counters["auth_failed"] += 1
            log.warn("refusing {peer}: {why}", peer=link.describe(), why=creds)
            return creds
        assert self.portal is not None
        d = auth.login(self.portal, creds, method).addCallback(
            lambda result: self._logged_in(link, method, result)
        )
        if not d.called:
            return d  # a password check, in a thread
        # Tokens and certificates answer at once: the handshake goes on in this turn.
        outcome: list[Any] = []
        d.addBoth(outcome.append)
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        return outcome[0]

    def _logged_in(self, link: Link, method: str, result: auth.Identity | str) -> str | None:
        ctx = self.ctx
        if isinstance(result, str):
            self.counters["auth_failed"] += 1
            log.warn("refusing {peer}: {why}", peer=link.describe(), why=result)
            return result
        if not result.node and link.peer_id in ctx.routing.reachable():
            return (
                f"node id {link.peer_id:016x} is already in use in this mesh; "
                "restart the peer (it picks a new random id)"
            )
        self.counters["auth_ok"] += 1
        link.identity = result
        log.info(
            "{peer} authenticated as {user} by {method}{node}",
            peer=link.describe(), user=result.user, method=method,
            node=" (mesh node)" if result.node else "",
        )
        if not result.node:
            link.gate = LinkGate(self, link, result)
        return None

    def _credentials(self, link: Link, given: Any) -> tuple[Any, str]:
        if given is not None:
            if not isinstance(given, dict):
                return "malformed credentials in HELLO (expected an object)", ""
            token, user, password = given.get("token"), given.get("user"), given.get("password")
            if isinstance(token, str) and 0 < len(token) <= _MAX_SECRET:
                return auth.TokenCredentials(token.encode("utf-8", "surrogatepass")), "token"
            if (
                isinstance(user, str) and isinstance(password, str)
                and 0 < len(user) <= 256 and len(password) <= _MAX_SECRET
            ):
                return UsernamePassword(
                    user.encode("utf-8", "surrogatepass"),
                    password.encode("utf-8", "surrogatepass"),
                ), "password"
            return "malformed credentials in HELLO (token, or user and password)", ""
        if self.security.cert_auth and self.security.tls_ca:
            name = tls.peer_certificate_name(link.transport)
            if name:
                return auth.CertificateCredentials(name), "certificate"
        return (
            "authentication required: this node accepts "
            + " or ".join(w for w, on in (
                ("a token (--token-file)", self.security.tokens),
                ("a user and password (--login, --password-file)", self.security.passwords),
                ("a TLS client certificate (tls: endpoint, --tls-cert)",
                 self.security.cert_auth and self.security.tls_ca),
            ) if on)
        ), ""

    def check_caller(self, node_id: int, operation: str, channel: str) -> str | None:
        """May the node whose request a handler serves do ``operation`` on ``channel``
        (for services that act on a caller's behalf)? None if so, else the denial."""
        ctx = self.ctx
        if node_id == ctx.node_id or not self.security.authenticates:
            return None
        link = ctx.links.get(node_id)
        gate: LinkGate | None = getattr(link, "gate", None) if link is not None else None
        if gate is not None:
            if self.policy.allows(gate.identity, operation, channel):
                return None
            return self.policy.denial(gate.identity, operation, channel)
        if link is not None or self.identity_of(node_id) in self.security.nodes:
            return None  # a trusted mesh node
        return (
            f"permission denied: {operation} on channel {channel!r} for a client of another "
            "node; ask the node you are linked to"
        )

    def breach(self, link: Link, limit: str, text: str) -> str:
        self.counters["limit_breaches"] += 1
        log.warn("{peer}: limit {limit}: {text}", peer=link.describe(), limit=limit, text=text)
        return text

    def expects_welcome(self, hello: wire.Hello) -> bool:
        """Does a listener that sent ``hello`` authenticate us (then its verdict follows)?"""
        return CAPABILITY in hello.capabilities

    def welcome_user(self, frame: wire.Frame) -> str | None:
        if frame.kind != _CONTROL:
            return None
        try:
            kind, user = decode_object(frame.payload)
        except Exception:  # noqa: BLE001 - anything else is not a welcome
            return None
        return user if kind == "welcome" and isinstance(user, str) else None

    def link_up(self, link: Link) -> None:
        """Link just admitted, before the context sends its records on it."""
        link._on_run = self.ctx._on_data_run
        identity = getattr(link, "identity", None)
        if not link.outgoing and self.security.authenticates:
            # First frame after our HELLO: the dialler waits for it (see Link._welcome).
            link.send(_control(["welcome", identity.user if identity else ""]))
        gate: LinkGate | None = getattr(link, "gate", None)
        if gate is not None:
            gate.install()
        if identity is not None:
            self._bind(link.peer_id, identity.user, exclude=None)
        if self.idents:
            link.send(_control(["ident", [[n, *v] for n, v in self.idents.items()]]))
        if CAPABILITY in link.peer_capabilities:
            for name, chans in list(self._opened.items()):
                for chan in list(chans):
                    if not chan.closed:
                        self._send_claims(link, chan, name)

    # --- identities

    def _bind(self, node_id: int, user: str, exclude: Link | None) -> None:
        version = time.time_ns()
        current = self.idents.get(node_id)
        if current is not None and current[0] == user:
            return
        binding = (user, version, self.ctx.node_id)
        self.idents[node_id] = binding
        self.counters["idents"] += 1
        self._flood_idents([[node_id, *binding]], exclude)

    def _flood_idents(self, bindings: list, exclude: Link | None) -> None:
        frame = _control(["ident", bindings])
        for link in self.ctx.links.values():
            if link is not exclude and not link._closing:
                link.send(frame)
        self._prune_idents()

    def _prune_idents(self) -> None:
        nodes = self.ctx.routing.nodes
        if len(self.idents) > 2 * len(nodes) + 1024:
            for node_id in [n for n in self.idents if n not in nodes]:
                del self.idents[node_id]

    def identity_of(self, node_id: int) -> str | None:
        binding = self.idents.get(node_id)
        if binding is not None:
            return binding[0]
        if node_id == self.ctx.node_id:
            return self.security.user
        return None

    def _on_control(self, link: Link, frame: wire.Frame) -> None:
        payload = frame.payload
        head = payload[:24]
        if b"ident" not in head and b"denied" not in head:
            self._ctx_control(link, frame)
            return
        try:
            message = decode_object(payload)
            kind = message[0]
        except Exception as e:  # noqa: BLE001
            raise ProtocolError(f"malformed control message: {e}") from None
        if kind not in ("ident", "denied"):
            self._ctx_control(link, frame)
            return
        self.ctx.counters["control_in"] += 1
        # Only links we trust speak for others: ours we dialled, and authenticated nodes.
        trusted = link.outgoing or (
            getattr(link, "gate", None) is None
            and (getattr(link, "identity", None) is not None or not self.security.authenticates)
        )
        if not trusted:
            return
        if kind == "ident":
            self._take_idents(link, message)
        else:
            self._take_denial(message)

    def _take_idents(self, link: Link, message: list) -> None:
        try:
            bindings = message[1]
            changed = []
            for node_id, user, version, origin in bindings:
                if not (isinstance(node_id, int) and isinstance(user, str)
                        and isinstance(version, int) and isinstance(origin, int)):
                    raise ValueError("bad binding")
                current = self.idents.get(node_id)
                if current is None or (version, origin) > current[1:]:
                    self.idents[node_id] = (user, version, origin)
                    changed.append([node_id, user, version, origin])
        except (ValueError, TypeError, IndexError) as e:
            raise ProtocolError(f"malformed ident message: {e}") from None
        if changed:
            self._flood_idents(changed, exclude=link)

    # --- the client side: claims and denials

    def channel_opened(self, channel: Any) -> None:
        """Called by every channel end as it opens, before it registers any interest."""
        name = channel.name
        self._opened.setdefault(name, weakref.WeakSet()).add(channel)
        for op, _pattern in _operations(channel):
            denial = self.denials.get((op, name))
            if denial is not None:
                _apply_denial(channel, op, denial)
        for link in self.ctx.links.values():
            if CAPABILITY in link.peer_capabilities and not link._closing:
                self._send_claims(link, channel, name)

    def _send_claims(self, link: Link, channel: Any, name: str) -> None:
        for op, pattern in _operations(channel):
            link.send(_control(["claim", op, pattern, name]))

    def _take_denial(self, message: list) -> None:
        try:
            _, op, name, text = message
            if op not in OPERATIONS or not isinstance(name, str) or not isinstance(text, str):
                raise ValueError("bad denial")
        except (ValueError, TypeError) as e:
            raise ProtocolError(f"malformed denied message: {e}") from None
        error = PermissionDenied(text)
        error.channel, error.operation = name, op  # type: ignore[attr-defined]
        if (op, name) not in self.denials:
            log.warn("{node}: {text}", node=self.ctx.name, text=text)
        if len(self.denials) < 10000:
            self.denials[(op, name)] = error
        for channel in list(self._opened.get(name, ())):
            if op in dict(_operations(channel)):
                _apply_denial(channel, op, error)


def _operations(channel: Any) -> list[tuple[str, str]]:
    from .channels import PubChannel, RepChannel, ReqChannel, StateChannel, SubChannel

    if isinstance(channel, PubChannel):
        return [(PUBLISH, "pubsub")]
    if isinstance(channel, SubChannel):
        return [(SUBSCRIBE, channel.pattern)]
    if isinstance(channel, ReqChannel):
        return [(CALL, "reqrep")]
    if isinstance(channel, RepChannel):
        return [(SERVE, "reqrep")]
    if isinstance(channel, StateChannel):
        return [(SUBSCRIBE, "state"), (SET_STATE, "state")]
    return []


def _raiser(error: Exception) -> Any:
    def raise_it(*_args: Any, **_kwargs: Any) -> Any:
        raise error

    return raise_it


def _failer(error: Exception) -> Any:
    return lambda *_args, **_kwargs: defer.fail(error)


def _apply_denial(channel: Any, op: str, error: PermissionDenied) -> None:
    """Make the channel's operation fail with ``error`` from now on."""
    from .channels import StateChannel

    channel.denied = error
    if op == PUBLISH:
        channel.send = channel.write = _raiser(error)
    elif op == CALL:
        channel.call = _failer(error)
    elif op == SET_STATE:
        channel.send = _raiser(error)
    elif op == SUBSCRIBE:
        if isinstance(channel, StateChannel):
            channel.recv = _raiser(error)
        else:
            waiters, channel._waiters = channel._waiters, deque()
            channel.recv = _failer(error)
            for d in waiters:
                d.errback(error)
    elif op == SERVE:
        log.error("{error}", error=str(error))


def _control(body: list) -> bytes:
    return wire.encode_frame(_CONTROL, encode_object(body))
