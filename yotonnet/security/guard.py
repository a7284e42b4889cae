"""The guard: a context's security at run time (admission, gates, identities, denials).

One :class:`Guard` per :class:`~yotonnet.mesh.context.Context`, built from its
:class:`~yotonnet.security.Security`. It does four jobs, all at the edge of
the mesh so that forwarding between trusted nodes costs nothing extra:

**Admission** (at the handshake). An outgoing link is trusted: we chose the
endpoint, and on TLS its certificate proved the name. An incoming link is
authenticated through the twisted.cred portal (:mod:`yotonnet.security.auth`); a
peer whose user is listed in ``nodes`` is a trusted mesh node, any other
user is a *client*. Without configured authentication only local peers
(loopback, unix sockets, in-process) are accepted, and they are trusted as
today. A refusal is an ERROR frame naming the problem, then a disconnect.

**Gates** (client links only). A client may only speak for itself (every
frame's source is its own node id) and only on channels it *claimed* and was
granted: a client context sends ``["claim", operation, pattern, name]`` for
each channel it opens, before its routing record; the first node checks the
name against the :class:`~yotonnet.security.authz.Policy` and answers a refusal with
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

import os
import struct
import time
import weakref
from typing import TYPE_CHECKING, Any

from twisted.cred.portal import Portal
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.logger import Logger

from ..core import handshake, wire
from ..core.leaves import LEAF
from ..core.leaves import PUB as PUB_ROLE
from ..core.leaves import REQ as REQ_ROLE
from ..core.messages import encode_object
from ..core.names import channel_id, validate_channel_name
from ..core.ratelog import LogBudget
from ..core.routing import REP, STATE, SUB, NodeState
from ..core.stateclock import STATE_CLOCK_JUMP, state_version
from ..core.wire import HEADER_SIZE, REPLY_DENIED, REPLY_ERROR, FrameKind
from ..errors import PermissionDenied, ProtocolError
from . import auth, linkauth, tls
from .authz import CALL, OPERATIONS, PUBLISH, SERVE, SET_STATE, SUBSCRIBE
from .localsecret import LocalSecretError, ensure_secret
from .peercred import is_loopback, peer_uid
from .settings import Security, SecurityError

if TYPE_CHECKING:
    from ..mesh.context import Context
    from ..mesh.link import Link

log = Logger(namespace="yotonnet.security")

CAPABILITY = "authz-1"
_DATA = int(FrameKind.DATA)
_REPLY = int(FrameKind.REPLY)
_CONTROL = int(FrameKind.CONTROL)
_SEQ = struct.Struct("<Q")
_SOURCE_OFFSET = 20
#: frames whose source a leaf may ask the identity of (IdentifiedSubChannel, caller())
_SOURCED = frozenset((_DATA, int(FrameKind.LATEST), int(FrameKind.REQUEST),
                      int(FrameKind.RESENT)))
#: bindings remembered as told, per leaf
_MAX_TOLD = 65_536
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
        self.denied_claims = 0
        #: the trees a client's messages may follow: its own, or (a leaf) this node's
        self.roots = (0, guard.ctx.node_id)

    # --- the filter a client link's frames go through

    def filtered(
        self, handlers: dict[int, Any], on_frames: Any
    ) -> tuple[dict[int, Any], Any]:
        """The handlers a client link dispatches to: the node's (``handlers``, DATA to
        ``on_frames``), each behind this gate's check of what the client may send."""
        self._node_handlers = handlers
        self._node_frames = on_frames
        gated: dict[int, Any] = {}
        for kind, handler in handlers.items():
            if kind == FrameKind.REQUEST:
                gated[kind] = self.on_request
            elif kind == FrameKind.REPLY:
                gated[kind] = self.on_reply
            elif kind == FrameKind.STATE:
                gated[kind] = self.on_state
            elif kind == FrameKind.CONTROL:
                gated[kind] = self.on_control
            elif kind == FrameKind.LATEST:
                gated[kind] = self._publish_gate(handler)
            elif kind == FrameKind.CREDIT:
                gated[kind] = handler  # credit is about our frames to it
            elif kind == FrameKind.ACK:
                # A client follows only what it may subscribe to (an ACK asking for a
                # repair makes a publisher send it messages).
                gated[kind] = self._granted(SUBSCRIBE, handler)
            elif kind in (FrameKind.RESENT, FrameKind.TAIL):
                gated[kind] = self._granted(PUBLISH, handler)
            else:
                # A kind added later: at least the client may speak only for itself.
                gated[kind] = self._own_only(handler)
        return gated, self.on_frames

    def sending(self, data: bytes) -> None:
        """A frame goes to the client: a reply to one of its requests ends it (replies go
        out one per send)."""
        if self.pending and data[4] == _REPLY and len(data) >= HEADER_SIZE:
            self.pending.pop(_SEQ.unpack_from(data, 36)[0], None)

    def on_frames(self, link: Link, frames: list[wire.Frame], i: int, n: int) -> int:
        first = frames[i]
        channel, source = first[3], first[4]
        if (source == link.peer_id and channel in self.grants[PUBLISH]
                and first[5] in self.roots):
            return self._node_frames(link, frames, i, n)
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
            if (frame.source == link.peer_id and frame.channel in self.grants[PUBLISH]
                    and frame.dest in self.roots):
                handler(link, frame)
            else:
                self._refuse(PUBLISH, frame.channel, frame.source, 1)

        return gate

    def _granted(self, operation: str, handler: Any) -> Any:
        def gate(link: Link, frame: wire.Frame) -> None:
            if frame.source == link.peer_id and frame.channel in self.grants[operation]:
                handler(link, frame)
            else:
                self._refuse(operation, frame.channel, frame.source, 1)

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
        self._node_handlers[FrameKind.REQUEST](link, frame)

    def on_reply(self, link: Link, frame: wire.Frame) -> None:
        if frame.source != link.peer_id or frame.channel not in self.grants[SERVE]:
            self._refuse(SERVE, frame.channel, frame.source, 1)
            return
        self._node_handlers[FrameKind.REPLY](link, frame)

    def on_state(self, link: Link, frame: wire.Frame) -> None:
        if frame.source != link.peer_id or frame.channel not in self.grants[SET_STATE]:
            self._refuse(SET_STATE, frame.channel, frame.source, 1)
            return
        ctx = self.guard.ctx
        clock, writer = state_version(frame.payload, frame.channel)
        if writer != link.peer_id:
            # A client writes as itself; values of other writers reach holders from
            # those writers and from nodes, not relayed by a client.
            self.guard.counters["state_refused"] += 1
            return
        known = ctx.state_clock(frame.channel)
        if clock > known + STATE_CLOCK_JUMP:
            self.guard.counters["state_refused"] += 1
            raise ProtocolError(
                f"STATE version clock {clock} on channel {self._name(frame.channel)} is more "
                f"than {STATE_CLOCK_JUMP} past the channel's clock here ({known}); a write "
                "advances a channel's clock by one"
            )
        self._node_handlers[FrameKind.STATE](link, frame)

    def _name(self, channel: int) -> str:
        name = self.names.get(channel)
        return repr(name) if name is not None else f"{channel:016x}"

    def on_control(self, link: Link, frame: wire.Frame) -> None:
        ctx = self.guard.ctx
        ctx.counters["control_in"] += 1
        message = wire.decode_control(frame.payload, ctx.config.max_control_frame)
        kind = message[0]
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
            ctx.node.topology.on_record(link, ["node", state.to_wire()])
        elif kind == "leaf":
            # A leaf client: what it holds and uses, within what it was granted.
            ctx.node.topology.on_leaf(link, message, self._may_use)
        # anything else (identity bindings above all) from a client is not believed

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
            self.denied_claims += 1
            limit = self.guard.security.max_denied_per_link
            if self.denied_claims > limit:
                raise ProtocolError(self.guard.breach(
                    self.link, "max_denied_per_link",
                    f"more than {limit} denied claims on this link (max_denied_per_link); "
                    "a client asks only for channels it may use",
                ))
            self.guard.log_limited("denied", "info", "{peer}: {text}", peer=self.link.describe(),
                                   text=text)
            self._tell(op, name, text)

    def _may_use(self, channel: int, role: str) -> bool:
        """May a leaf client list ``channel`` under ``role`` (yotonnet.core.leaves)? What
        it holds, only as granted; what it uses, always: that only asks who holds it (a
        denied call still fails at once, with the denial)."""
        if role in (PUB_ROLE, REQ_ROLE):
            return True
        return self._may_hold(channel, role)

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
        self.guard.log_limited("denied", "warn", "{peer}: {text}", peer=self.link.describe(),
                               text=text)
        if key[0] != "source":
            self._tell(op, self.names.get(channel, f"{channel:016x}"), text)

    def _tell(self, op: str, name: str, text: str) -> None:
        self.link.send(_control(["denied", op, name, text]))

    def _reply(self, frame: wire.Frame, status: int, payload: bytes) -> None:
        # In the name of the replier the client asked: it matches replies on that node
        # (its own first node speaks for the mesh to it, as it does for everything).
        self.link.send(
            wire.reply_frame(1, status, frame.channel, frame.dest, frame.source, frame.seq,
                             payload)
        )


class IdentityFeed:
    """The identities a leaf of this node is told: a leaf gets no floods of bindings
    (there would be one per join of anyone), so each binding goes to it once, just
    before the first message or call of that node that reaches it."""

    #: the frame kinds (byte 4 of a frame) whose source a leaf may need to be told of:
    #: :meth:`before` says None for any other
    kinds = _SOURCED

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.told: set[int] = set()

    def before(self, data: bytes) -> bytes | None:
        """The control frame to send before ``data`` (None: nothing to tell)."""
        if len(data) < HEADER_SIZE or data[4] not in _SOURCED:
            return None
        source = _SEQ.unpack_from(data, _SOURCE_OFFSET)[0]
        if source in self.told:
            return None
        binding = self.guard.idents.get(source)
        if binding is None or not binding[0]:
            return None
        if len(self.told) >= _MAX_TOLD:
            self.told.clear()  # told again if needed: a binding sent twice costs little
        self.told.add(source)
        return _control(["ident", [[source, *binding]]])


class Guard:
    """A context's security at run time; see the module docstring."""

    def __init__(self, context: Context, security: Security) -> None:
        self.ctx = context
        self.security = security
        self.policy = security.policy()
        self.password_checker: auth.PasswordFileChecker | None = None
        checkers: list[Any] = []
        try:
            if security.tokens:
                checkers.append(auth.TokenFileChecker(security.tokens))
            if security.passwords:
                self.password_checker = auth.PasswordFileChecker(security.passwords)
                checkers.append(self.password_checker)
        except ValueError as e:
            raise SecurityError(str(e)) from None
        if security.cert_auth and security.tls_ca:
            checkers.append(auth.CertificateChecker())
        self._checkers = checkers
        self.portal = Portal(auth.Realm(security.roles, security.nodes), checkers)
        self._secret_ready = False
        #: why the local secret cannot be had (listeners then take only logins)
        self.secret_problem: str | None = None
        #: set once this context accepts peers (it then has others to protect)
        self.serving = False
        context.capabilities = (*context.capabilities, CAPABILITY)
        security.dial_credentials()  # a missing or empty secret file fails here, not later
        #: node id -> (user, version, origin node); user "" for a leaf that left (kept a
        #: while, so that a binding still on its way cannot come back after it)
        self.idents: dict[int, tuple[str, int, int]] = {}
        # leaves that left: node id -> when their unbinding came (forgotten after a while)
        self._unbound: dict[int, float] = {}
        # bindings held past which they are looked at again for ones to forget
        self._prune_at = 0
        #: (operation, channel name) -> the denial a node sent us
        self.denials: dict[tuple[str, str], PermissionDenied] = {}
        self._opened: dict[str, weakref.WeakSet] = {}
        self.handshaking = 0
        self.counters = {
            "auth_ok": 0, "auth_failed": 0, "refused_links": 0, "denied": 0,
            "denied_frames": 0, "limit_breaches": 0, "idents": 0, "state_refused": 0,
            "log_lines_held": 0,
        }
        #: peers can cause log lines by the thousand: they get a budget
        self.log_budgets: dict[str, LogBudget] = {}
        self._warned_plain: set[str] = set()
        context.node.add_control_handler("ident", self.on_ident)
        context.node.add_control_handler("denied", self.on_denied)

    # --- endpoints

    def server_endpoint(self, endpoint: str) -> Any:
        if tls.is_tls(endpoint):
            return tls.server_endpoint(self.ctx.reactor, endpoint, self.security.tls_files())
        if endpoint.startswith("unix:") and ":mode=" not in endpoint:
            # Twisted makes unix sockets 0666; only this user's processes belong here.
            endpoint += ":mode=600"
        return serverFromString(self.ctx.reactor, endpoint)

    def client_endpoint(self, endpoint: str) -> Any:
        if tls.is_tls(endpoint):
            return tls.client_endpoint(self.ctx.reactor, endpoint, self.security.tls_files())
        return clientFromString(self.ctx.reactor, endpoint)

    def prepare_listener(self) -> None:
        """Before a listener opens: have the local secret ready, or know why not.

        Raises SecurityError when the listener would admit nobody at all."""
        self.serving = True
        self._ensure_secret()
        sec = self.security
        if self.secret_problem and not (sec.checks_logins or sec.allow_anonymous):
            raise SecurityError(
                f"this node could admit no peer: {self.secret_problem}; fix that, or configure "
                "tokens, passwords or TLS client certificates ([security] table), or allow "
                "anonymous peers (--allow-anonymous) on a network you trust"
            )

    def _ensure_secret(self) -> bytes | None:
        if self.secret_problem is not None:
            return None
        try:
            secret, path, created = ensure_secret(self.security.secret_file)
        except (LocalSecretError, OSError) as e:
            self.secret_problem = str(e)
            log.error("{node}: no local secret: {why}", node=self.ctx.name, why=str(e))
            return None
        if not self._secret_ready:
            self._secret_ready = True
            self.portal.registerChecker(auth.LocalSecretChecker(secret, auth.local_identity()))
            log.info(
                "{node}: peers prove the local secret in {path} ({made}; only OS user {user} "
                "can read it)", node=self.ctx.name, path=path,
                made="made now" if created else "found", user=auth.os_user(),
            )
        return secret

    def listening(self, where: str) -> None:
        """Log who may link on a new listener (the operator should know)."""
        sec = self.security
        ways = [w for w, on in (
            (f"processes of OS user {auth.os_user()} (local secret)", self._secret_ready),
            ("tokens", sec.tokens), ("passwords", sec.passwords),
            ("TLS client certificates", sec.cert_auth and sec.tls_ca),
        ) if on]
        if sec.allow_anonymous:
            log.warn(
                "{node} on {where}: allow_anonymous is set: ANY peer that reaches this address "
                "joins the mesh{how}, without proving who it is", node=self.ctx.name,
                where=where,
                how=" as a node" if sec.anonymous_mesh else " as a client",
            )
        log.info(
            "{node} on {where}: peers must authenticate ({ways})",
            node=self.ctx.name, where=where, ways=", ".join(ways) or "nobody can",
        )

    # --- admission (the exchanges themselves: yotonnet.linkauth)

    def authenticator(self, link: Link) -> linkauth.ListenerAuth | linkauth.DiallerAuth:
        """The handshake partner of a new link."""
        if link.outgoing:
            return linkauth.DiallerAuth(self, link)
        self.serving = True
        self._ensure_secret()
        return linkauth.ListenerAuth(self, link)

    def accepted_methods(self) -> tuple[str, ...]:
        sec = self.security
        return tuple(m for m, on in (
            (handshake.SECRET, self._secret_ready),
            (handshake.TOKEN, sec.tokens),
            (handshake.PASSWORD, self.password_checker is not None),
            (handshake.CERTIFICATE, sec.cert_auth and sec.tls_ca),
            (handshake.ANONYMOUS, sec.allow_anonymous),
        ) if on)

    def ways_in(self, why: str) -> str:
        """A refusal that names what this node does accept."""
        sec = self.security
        ways = [w for w, on in (
            (f"the local secret of OS user {auth.os_user()} (processes of that user find it "
             "by themselves)", self._secret_ready),
            ("a token (--token-file)", sec.tokens),
            ("a user and password (--login, --password-file)", self.password_checker),
            ("a TLS client certificate (tls: endpoint, --tls-cert)",
             sec.cert_auth and sec.tls_ca),
        ) if on]
        text = f"{why}: this node accepts " + (" or ".join(ways) or "nobody")
        if not (sec.tokens or self.password_checker or (sec.cert_auth and sec.tls_ca)):
            text += (
                "; a process of another OS user cannot read that secret: ask the node's "
                "operator for a login (the node's --tokens or --passwords, then your "
                "--token-file, or --login with --password-file)"
            )
        return text

    def refuse_connection(self) -> str | None:
        """Before any byte: too many connections still shaking hands?"""
        if self.handshaking >= self.security.max_links:
            self.counters["refused_links"] += 1
            return f"{self.handshaking} connections are still shaking hands (max_links)"
        return None

    def check_capacity(self, link: Link) -> str | None:
        ctx = self.ctx
        limit = self.security.max_links
        count = len(ctx.neighbours) + len(ctx.node.topology.leaves)
        if count >= limit and ctx.link_to(link.peer_id) is None:
            return self.breach(
                link, "max_links",
                f"this node has {count} links, its max_links; link to another node",
            )
        return None

    def warn_plain_credentials(self, link: Link, method: str) -> None:
        """Logging in over plain TCP to another host: say loudly that it is readable."""
        where = link.endpoint_text
        if where in self._warned_plain or is_loopback(link.transport):
            return
        self._warned_plain.add(where)
        log.warn(
            "{node}: logging in with a {method} over PLAIN TCP to {where}: the {method} itself "
            "is never sent, but everything after the login can be read and changed on the "
            "way; use a tls: endpoint beyond this host",
            node=self.ctx.name, method=method, where=where,
        )

    def count_failure(self, link: Link, why: str) -> None:
        self.counters["auth_failed"] += 1  # the link logs why when it closes

    def log_limited(self, kind: str, level: str, format: str,  # noqa: A002
                    **fields: Any) -> None:
        """Log a line a peer caused, within this node's budget for that ``kind`` of line
        ("denied", "refused", "breach": one kind's flood never hides another's)."""
        budget = self.log_budgets.get(kind)
        if budget is None:
            budget = self.log_budgets[kind] = LogBudget(self.ctx.reactor.seconds)
        held = budget.take()
        if held is None:
            self.counters["log_lines_held"] += 1
            return
        if held:
            format += " ({held} similar lines were held back before this one)"
            fields["held"] = held
        getattr(log, level)(format, **fields)

    def admit_unauthenticated(self, link: Link) -> str | None:
        """May a peer whose protocol proves nothing (a Yoton context) link here?

        One we dialled, yes (we chose the endpoint). An incoming one only when its
        socket belongs to this node's own OS user on this host, or when anonymous
        peers are allowed: another user on the same host is a stranger."""
        if link.outgoing or self.security.allow_anonymous:
            return None
        uid = peer_uid(link.transport)
        if uid == os.getuid():
            return None
        self.counters["refused_links"] += 1
        who = "not on this host" if uid is None else f"runs as uid {uid}"
        why = (
            f"authentication required: a Yoton peer cannot prove who it is, so this node admits "
            f"only Yoton contexts of its own OS user {auth.os_user()} on this host, and this one "
            f"{who}; allow anonymous peers (--allow-anonymous) to admit any that reach it"
        )
        return why

    def check_new_peer(self, link: Link, identity: auth.Identity) -> str | None:
        """A peer just logged in: may it join as it is?"""
        if not identity.node and link.peer_id in self.ctx.routing.reachable():
            return (
                f"node id {link.peer_id:016x} is already in use in this mesh; "
                "restart the peer (it picks a new random id)"
            )
        return None

    def refuse_unproven(self, link: Link) -> str | None:
        """A listener proved nothing (it takes anonymous peers): may we trust it anyway?"""
        sec = self.security
        if sec.has_credentials:
            return (
                "the peer admits anonymous peers and proved nothing, and this node logs in "
                "with credentials: it will not trust a peer that cannot prove who it is"
            )
        if sec.allow_anonymous or not self.serving:
            return None
        return (
            "the peer admits anonymous peers and proved nothing, and this node serves "
            "authenticated peers: it will not relay for a node nobody vouches for; allow "
            "anonymous peers here too (--allow-anonymous) or give the peer authentication"
        )

    def admitted(self, link: Link, admission: linkauth.Admission) -> None:
        """A link authenticated: note who it is and what it may do."""
        link.identity = admission.identity
        link.trusted = admission.trusted
        link.authenticated_as = admission.user
        link.gate = None
        identity = admission.identity
        if link.outgoing:
            return
        self.counters["auth_ok"] += 1
        if identity is not None:
            log.info(
                "{peer} authenticated as {user} by {method}{node}",
                peer=link.describe(), user=identity.user, method=identity.method,
                node=" (mesh node)" if admission.trusted else "",
            )
        if not admission.trusted:
            assert identity is not None
            link.gate = LinkGate(self, link, identity)
        if link.role == LEAF:
            link.feed = IdentityFeed(self)

    def check_caller(self, node_id: int, operation: str, channel: str) -> str | None:
        """May the node whose request a handler serves do ``operation`` on ``channel``
        (for services that act on a caller's behalf)? None if so, else the denial."""
        ctx = self.ctx
        if node_id == ctx.node_id or not self.security.authenticates:
            return None
        link = ctx.link_to(node_id)
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
        self.log_limited("breach", "warn", "{peer}: limit {limit}: {text}", peer=link.describe(),
                         limit=limit, text=text)
        return text

    def link_up(self, link: Link) -> None:
        """Link just admitted, before the context sends its records on it."""
        identity = link.identity
        if identity is not None and identity.method != handshake.ANONYMOUS:
            self._bind(link.peer_id, identity.user, exclude=None)
        if self.idents and link.role != LEAF:
            # (A leaf is told none but those it needs: see IdentityFeed.)
            link.send(_control(["ident", [[n, *v] for n, v in self.idents.items() if v[0]]]))
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
        for link in self.ctx.neighbours.values():  # (a leaf is told none)
            if link is not exclude and not link.closing:
                link.send(frame)
        self._prune_idents()

    def link_down(self, link: Link) -> None:
        """A leaf of ours left: its binding goes from the mesh with it."""
        binding = self.idents.get(link.peer_id)
        if (link.role == LEAF and binding is not None and binding[0]
                and binding[2] == self.ctx.node_id
                and self.ctx.link_to(link.peer_id) is link):
            unbinding = ("", max(time.time_ns(), binding[1] + 1), self.ctx.node_id)
            self.idents[link.peer_id] = unbinding
            self._unbound.pop(link.peer_id, None)
            self._unbound[link.peer_id] = self.ctx.reactor.seconds()
            self._flood_idents([[link.peer_id, *unbinding]], exclude=None)

    def _prune_idents(self) -> None:
        unbound = self._unbound
        if unbound:
            # An unbinding stays long enough for any binding still in flight to meet it;
            # they are kept in the order they came, so only the expired are looked at.
            old = self.ctx.reactor.seconds() - max(60.0, self.ctx.config.stale_after)
            while unbound:
                node_id, when = next(iter(unbound.items()))
                if when >= old:
                    break
                del unbound[node_id]
                binding = self.idents.get(node_id)
                if binding is not None and not binding[0]:
                    del self.idents[node_id]  # still the unbinding: forget it
        routing = self.ctx.routing
        nodes = routing.nodes
        if len(self.idents) > max(2 * len(nodes) + 1024, self._prune_at):
            # Bindings of nodes gone, and of leaves whose hub is gone. Leaves of live hubs
            # stay, so the next look waits until the bindings have doubled: a scan per
            # flood would make every join cost every node the whole mesh's leaves.
            for node_id in [n for n, (_, _, origin) in self.idents.items()
                            if n not in nodes and not routing.is_reachable(origin)]:
                del self.idents[node_id]
            self._prune_at = 2 * len(self.idents)

    def home_of(self, node_id: int) -> int | None:
        """The node through which ``node_id`` is reached: itself when it is a node of the
        picture, its hub when it is a leaf (known to the hub by its link, elsewhere by the
        binding its hub flooded); None when unknown."""
        ctx = self.ctx
        if node_id in ctx.routing.nodes:
            return node_id
        if node_id in ctx.node.topology.leaves.entries:
            return ctx.node_id
        binding = self.idents.get(node_id)
        if binding is not None and binding[0] and binding[2] in ctx.routing.nodes:
            return binding[2]
        return None

    def identity_of(self, node_id: int) -> str | None:
        binding = self.idents.get(node_id)
        if binding is not None:
            return binding[0] or None
        if node_id == self.ctx.node_id:
            return self.security.user
        return None

    def on_ident(self, link: Link, message: list) -> None:
        """``["ident", bindings]``: only links that proved they are nodes speak for others
        (see yotonnet.security.linkauth)."""
        if link.trusted:
            self._take_idents(link, message)

    def on_denied(self, link: Link, message: list) -> None:
        """``["denied", operation, channel, text]`` from a node we are a client of."""
        if link.trusted:
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
                    # (user "": an unbinding, the leaf left its hub)
                    self.idents[node_id] = (user, version, origin)
                    changed.append([node_id, user, version, origin])
                    if not user:
                        self._unbound.pop(node_id, None)
                        self._unbound[node_id] = self.ctx.reactor.seconds()
        except (ValueError, TypeError, IndexError) as e:
            raise ProtocolError(f"malformed ident message: {e}") from None
        if changed:
            self._flood_idents(changed, exclude=link)

    # --- the client side: claims and denials

    def channel_opened(self, channel: Any) -> None:
        """Called by every channel end as it opens, before it registers any interest."""
        name = channel.name
        self._opened.setdefault(name, weakref.WeakSet()).add(channel)
        for op, _pattern in channel.operations:
            denial = self.denials.get((op, name))
            if denial is not None:
                channel.deny(op, denial)
        for link in self.ctx.neighbours.values():
            if CAPABILITY in link.peer_capabilities and not link.closing:
                self._send_claims(link, channel, name)

    def _send_claims(self, link: Link, channel: Any, name: str) -> None:
        for op, pattern in channel.operations:
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
            if op in dict(channel.operations):
                channel.deny(op, error)


def _control(body: list) -> bytes:
    return wire.encode_frame(_CONTROL, encode_object(body))
