"""The TOML configuration file of a node and of the ``yotonnet`` client commands.

One file holds everything the command-line flags hold, in three tables::

    [node]                      # `yotonnet node` and `twistd yotonnet`
    name = "a"
    listen = ["tcp:7117:interface=127.0.0.1"]
    peers = ["tcp:otherhost:7117", "tcp:far:7117:cost=10"]  # cost: see yotonnet.costs
    status = "tcp:8080:interface=127.0.0.1"   # HTTP status endpoint (optional)
    status_hosts = ["node-a.example"]         # Host names it answers to besides its address
    status_token = false                      # true: every request needs the local secret
    log_format = "text"                       # or "json" (`yotonnet node` only)

    [client]                    # pub, sub, call, state, status, bench
    connect = "tcp:127.0.0.1:7117"
    timeout = 10.0

    [context]                   # the tunables of yotonnet.ContextConfig, in seconds
    heartbeat = 1.0
    busy_timeout = 5.0
    max_control_frame = 1048576 # limits on control traffic: see ContextConfig
    max_nodes = 10000

Flags override the file; a list flag given on the command line (``--listen``,
``--peer``) replaces the file's list. Unknown keys, wrong types and endpoint
strings Twisted cannot parse are a :class:`ConfigError` that names the key and
the file, so a typo never silently falls back to a default.

Sans-IO apart from reading the file: endpoints are parsed with no reactor.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.endpoints import clientFromString, serverFromString

from ..core.costs import split_cost
from ..core.names import MAX_NODE_NAME, check_peer_name
from ..mesh.context import ContextConfig
from ..security import tls
from ..security.settings import Security, SecurityError
from ..security.settings import merge as merge_security
from ..security.settings import parse_table as parse_security

DEFAULT_LISTEN = "tcp:7117:interface=127.0.0.1"
DEFAULT_CONNECT = "tcp:127.0.0.1:7117"
DEFAULT_TIMEOUT = 10.0
LOG_FORMATS = ("text", "json")


class ConfigError(ValueError):
    """A configuration file or flag value is wrong; the message says where and why."""


@dataclass
class NodeSettings:
    name: str | None = None
    listen: list[str] = field(default_factory=lambda: [DEFAULT_LISTEN])
    peers: list[str] = field(default_factory=list)
    status: str | None = None
    #: names (or IP literals) the status page's Host header may carry besides its address
    status_hosts: list[str] = field(default_factory=list)
    #: every status request must carry this OS user's local secret (yotonnet.localsecret)
    status_token: bool = False
    log_format: str = "text"


@dataclass
class ClientSettings:
    connect: str = DEFAULT_CONNECT
    timeout: float = DEFAULT_TIMEOUT


@dataclass
class Settings:
    node: NodeSettings = field(default_factory=NodeSettings)
    client: ClientSettings = field(default_factory=ClientSettings)
    context: ContextConfig = field(default_factory=ContextConfig)
    #: TLS, credentials, users, permissions, limits (the [security] table)
    security: Security = field(default_factory=Security)
    #: where the values came from, for error messages
    source: str = "defaults"


# --- the schema: key -> (kind, description of the expected value)

_STR, _OPT_STR, _STR_LIST, _NUMBER, _INT, _BOOL, _LOG_FORMAT = (
    "str", "optional str", "str list", "number", "int", "bool", "log format"
)

_NODE_KEYS = {
    "name": _OPT_STR,
    "listen": _STR_LIST,
    "peers": _STR_LIST,
    "status": _OPT_STR,
    "status_hosts": _STR_LIST,
    "status_token": _BOOL,
    "log_format": _LOG_FORMAT,
}
_CLIENT_KEYS = {"connect": _STR, "timeout": _NUMBER}
_CONTEXT_KEYS = {
    f.name: {"int": _INT, int: _INT, "bool": _BOOL, bool: _BOOL}.get(f.type, _NUMBER)
    for f in dataclasses.fields(ContextConfig)
}
_TABLES = {"node": _NODE_KEYS, "client": _CLIENT_KEYS, "context": _CONTEXT_KEYS}

# Limits the wire format or common sense puts on the context tunables.
_CONTEXT_LIMITS: dict[str, tuple[float, float, bool]] = {
    # key: (minimum, maximum, minimum allowed itself)
    "max_frame": (1024, 2**32 - 1, True),
    "max_hops": (1, 255, True),
    "heartbeat": (0, math.inf, False),
    "busy_timeout": (0, math.inf, False),
    "reroute_after": (0, math.inf, True),  # 0: only busy links are routed around
    "handshake_timeout": (0, math.inf, False),
    "reconnect_initial": (0, math.inf, False),
    "reconnect_max": (0, math.inf, False),
    # a CONTROL frame holds at least a node's own record; 1 KiB is already too small for most
    "max_control_frame": (1024, 2**32 - 1, True),
    "max_nodes": (1, math.inf, True),
    "max_nodes_per_peer": (0, math.inf, True),  # 0: as many as max_nodes
    "max_record_links": (1, math.inf, True),
    "max_record_interests": (1, math.inf, True),
    "max_routing_entries": (1, math.inf, True),
}


def _unknown(key: str, known: Any, where: str) -> ConfigError:
    hint = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(known), n=1)
    also = f"; did you mean {hint[0]!r}?" if hint else f"; known keys: {', '.join(known)}"
    return ConfigError(f"{where}: unknown key {key!r}{also}")


def _check_value(kind: str, key: str, value: Any, where: str) -> Any:
    def wrong(expected: str) -> ConfigError:
        return ConfigError(
            f"{where}: {key} must be {expected}, not {type(value).__name__} {value!r}"
        )

    if kind == _STR:
        if not isinstance(value, str) or not value:
            raise wrong("a non-empty string")
        return value
    if kind == _OPT_STR:
        if not isinstance(value, str):
            raise wrong("a string")
        return value or None  # "" means "not set", as an omitted key
    if kind == _STR_LIST:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise wrong("a list of non-empty strings")
        return list(value)
    if kind == _LOG_FORMAT:
        if value not in LOG_FORMATS:
            raise wrong(" or ".join(repr(f) for f in LOG_FORMATS))
        return value
    if kind == _INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
        return value
    if kind == _BOOL:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if kind == _NUMBER:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("a number")
        if not math.isfinite(value) or value < 0:
            raise wrong("a finite number >= 0")
        return float(value)
    raise AssertionError(kind)


def parse(text: str, source: str = "<string>") -> Settings:
    """Settings from TOML text: defaults, overridden by what the text sets."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    settings = Settings(source=source)
    for table, value in data.items():
        if table == "security":
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: 'security' must be a table ([security])")
            try:
                settings.security = parse_security(value, source)
            except SecurityError as e:
                raise ConfigError(str(e)) from None
            continue
        keys = _TABLES.get(table)
        if keys is None:
            raise _unknown(table, _TABLES, source)
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {table!r} must be a table ([{table}]), not a value")
        target = getattr(settings, table)
        for key, item in value.items():
            kind = keys.get(key)
            if kind is None:
                raise _unknown(f"{table}.{key}", keys, source)
            setattr(target, key, _check_value(kind, f"{table}.{key}", item, source))
    validate(settings)
    return settings


def load(path: str) -> Settings:
    """Settings from the TOML file at ``path``."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text: {e}") from None
    return parse(text, path)


#: the flags whose names are not their keys' (list flags are singular: --peer E --peer F)
_FLAG_OF = {"peers": "peer", "status_hosts": "status-host"}


def resolve(
    path: str | None = None,
    *,
    name: str | None = None,
    listen: list[str] | None = None,
    peers: list[str] | None = None,
    status: str | None = None,
    status_hosts: list[str] | None = None,
    status_token: bool | None = None,
    log_format: str | None = None,
    connect: str | None = None,
    timeout: float | None = None,
    security: dict[str, Any] | None = None,
) -> Settings:
    """The file at ``path`` (if any) with every flag that was given (not None) on top;
    ``security`` holds the security flags (Security field name -> value or None)."""
    settings = load(path) if path else Settings()
    if security:
        settings.security = merge_security(settings.security, **security)
    flags = {"name": name, "listen": listen, "peers": peers, "status": status,
             "status_hosts": status_hosts, "status_token": status_token,
             "log_format": log_format}
    cli = "command line"
    for key, value in flags.items():
        if value is not None:
            flag = "--" + _FLAG_OF.get(key, key).replace("_", "-")
            value = _check_value(_NODE_KEYS[key], flag, value, cli)
            setattr(settings.node, key, value)
            # Checked here too, so the error names the flag rather than the table key.
            if key == "name":
                check_node_name(value, flag, cli)
            elif key in ("listen", "status"):
                for endpoint in [value] if isinstance(value, str) else value:
                    check_server_endpoint(endpoint, flag, cli)
            elif key == "peers":
                for endpoint in value:
                    check_client_endpoint(endpoint, flag, cli)
            elif key == "status_hosts":
                settings.node.status_hosts = _status_hosts(value, flag, cli)
    if connect is not None:
        settings.client.connect = _check_value(_STR, "--connect", connect, cli)
        check_client_endpoint(connect, "--connect", cli)
    if timeout is not None:
        settings.client.timeout = _check_value(_NUMBER, "--timeout", timeout, cli)
        if timeout <= 0:
            raise ConfigError(f"{cli}: --timeout must be > 0 seconds")
    if path and any(v is not None for v in (*flags.values(), connect, timeout)):
        settings.source = f"{path} and flags"
    elif not path:
        settings.source = "flags"
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    """Check values a type check cannot: endpoint syntax, ranges, a listen endpoint,
    names (status host names come out lowercased)."""
    where = settings.source
    node = settings.node
    if node.name is not None:
        check_node_name(node.name, "node.name", where)
    if not node.listen:
        raise ConfigError(f"{where}: node.listen is empty; a node needs at least one endpoint")
    for endpoint in node.listen:
        check_server_endpoint(endpoint, "node.listen", where)
    for endpoint in node.peers:
        check_client_endpoint(endpoint, "node.peers", where)
    if node.status is not None:
        if _without_cost(node.status, "node.status", where) != node.status:
            raise ConfigError(f"{where}: node.status: cost= is an option of mesh links only")
        check_server_endpoint(node.status, "node.status", where)
    node.status_hosts = _status_hosts(node.status_hosts, "node.status_hosts", where)
    check_client_endpoint(settings.client.connect, "client.connect", where)
    if settings.client.timeout <= 0:
        raise ConfigError(f"{where}: client.timeout must be > 0 seconds")
    for key, (low, high, inclusive) in _CONTEXT_LIMITS.items():
        value = getattr(settings.context, key, None)
        if value is None:
            continue  # a tunable ContextConfig no longer has
        if value < low or value > high or (value == low and not inclusive):
            bound = ">=" if inclusive else ">"
            raise ConfigError(
                f"{where}: context.{key} = {value!r} is out of range ({bound} {low:g}"
                + (f", <= {high:g})" if high != math.inf else ")")
            )
    try:
        settings.context.check()
    except ValueError as e:
        raise ConfigError(f"{where}: context.{e}") from None


def check_node_name(name: str, key: str, where: str) -> None:
    """A node name its peers accept (they refuse the HELLO of any other), else ConfigError."""
    try:
        check_peer_name(name)
    except ValueError as e:
        raise ConfigError(
            f"{where}: {key}: {e}; peers refuse such a name, so use at most {MAX_NODE_NAME} "
            "printable characters"
        ) from None


# A DNS name as a browser sends it in Host (lowercase, no port), or an IP literal.
_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?\Z")


def check_status_host(name: str) -> str:
    """``name`` as a Host the status page may answer to: lowercased, an IP literal in its
    usual form (an IPv6 one without brackets); ValueError if it is neither."""
    text = name.strip().lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        mapped = getattr(ip, "ipv4_mapped", None)
        return str(mapped or ip)
    if not _HOST_NAME.match(text) or len(text) > 253:
        raise ValueError(
            f"{name!r} is not a host name or an IP address; give the name a browser shows "
            "in its address bar, without scheme, port or path (status.example.org, 10.0.0.5)"
        )
    return text


def _status_hosts(names: list[str], key: str, where: str) -> list[str]:
    try:
        return [check_status_host(n) for n in names]
    except ValueError as e:
        raise ConfigError(f"{where}: {key}: {e}") from None


def _without_cost(endpoint: str, key: str, where: str) -> str:
    try:
        return split_cost(endpoint)[0]
    except ValueError as e:
        raise ConfigError(f"{where}: {key}: {endpoint!r}: {e}") from None


def check_server_endpoint(endpoint: str, key: str, where: str) -> None:
    endpoint = _without_cost(endpoint, key, where)
    try:
        if tls.is_tls(endpoint):
            tls.check_endpoint(endpoint, server=True)
        else:
            serverFromString(None, endpoint)  # parsing only; nothing listens without a reactor
    except Exception as e:  # noqa: BLE001 - Twisted's parser raises ValueError, TypeError, ...
        raise ConfigError(
            f"{where}: {key}: {endpoint!r} is not a Twisted server endpoint ({e}); "
            "for example tcp:7117:interface=127.0.0.1 or unix:/run/yotonnet.sock"
        ) from None


def check_client_endpoint(endpoint: str, key: str, where: str) -> None:
    endpoint = _without_cost(endpoint, key, where)
    try:
        if tls.is_tls(endpoint):
            tls.check_endpoint(endpoint, server=False)
        else:
            clientFromString(None, endpoint)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(
            f"{where}: {key}: {endpoint!r} is not a Twisted client endpoint ({e}); "
            "for example tcp:127.0.0.1:7117 or unix:/run/yotonnet.sock"
        ) from None
