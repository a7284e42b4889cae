"""The command line of security: credentials flags, ``yotonnet certs``, ``yotonnet passwd``.

:func:`add_options` puts the same flags on ``node`` and on every client
subcommand (``yotonnet.cli.add_security_options`` calls it); :func:`flags`
turns them into overrides of the ``[security]`` table. Secrets are only ever
read from files (``--token-file``, ``--password-file``), never taken on the
command line, where ``ps`` would show them to every user of the machine.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any, NoReturn

#: flag dest -> Security field
_FLAGS = {
    "tls_ca": "tls_ca", "tls_cert": "tls_cert", "tls_key": "tls_key",
    "token_file": "token_file", "login": "user", "password_file": "password_file",
    "tokens": "tokens", "passwords": "passwords",
}


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "security",
        "TLS files and credentials (override the [security] table of --config)",
    )
    group.add_argument("--tls-ca", metavar="FILE", help="CA certificate that signs peers (PEM)")
    group.add_argument(
        "--tls-cert", metavar="FILE",
        help="this node's certificate for tls: endpoints (PEM; may also hold the key)",
    )
    group.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    group.add_argument(
        "--token-file", metavar="FILE", help="log in to the node with the token in FILE"
    )
    group.add_argument(
        "--login", metavar="USER", help="log in as USER (with --password-file, or alone on "
        "a TLS link whose client certificate names USER)",
    )
    group.add_argument("--password-file", metavar="FILE", help="the password for --login")
    group.add_argument(
        "--tokens", metavar="FILE",
        help="(node) accept peers presenting a token from FILE ('USER TOKEN' lines)",
    )
    group.add_argument(
        "--passwords", metavar="FILE",
        help="(node) accept peers with a password from FILE (`yotonnet passwd` lines)",
    )
    group.add_argument(
        "--allow-anonymous", action="store_true", default=None,
        help="(node, unsafe) with no authentication, accept peers from any address, "
             "not only loopback and unix sockets",
    )


def flags(args: argparse.Namespace) -> dict[str, Any]:
    """The security flags given on the command line, as Security overrides."""
    out = {field: getattr(args, dest, None) for dest, field in _FLAGS.items()}
    out["allow_anonymous"] = getattr(args, "allow_anonymous", None)
    return out


def add_commands(sub: Any) -> None:
    """``yotonnet certs`` and ``yotonnet passwd`` (they need no node)."""
    p = sub(
        "certs", "make a development CA and node certificates",
        "Write ca.pem and ca.key into DIR (kept if they exist) and NAME.pem and NAME.key\n"
        "for each --name, signed by that CA. Each certificate names its node in its common\n"
        "name (the user a TLS listener knows it as) and lists subjectAltNames: the name,\n"
        "localhost, 127.0.0.1, ::1 and every --san. Keys are written mode 0600.\n\n"
        "example:\n  yotonnet certs ./certs --name a --name b --san a.example.org",
    )
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--name", action="append", required=True, metavar="NAME",
                   help="a node or user to make a certificate for; repeatable")
    p.add_argument("--san", action="append", default=[], metavar="HOST_OR_IP",
                   help="another DNS name or IP address for every certificate; repeatable")
    p.set_defaults(run=_run_certs, config=None, connect=None, timeout=None)

    p = sub(
        "passwd", "print a passwords-file line for a user",
        "Read a password (twice, from the terminal; or one line of stdin) and print\n"
        "'USER:scrypt$...' for the node's --passwords file.",
    )
    p.add_argument("user", metavar="USER")
    p.set_defaults(run=_run_passwd, config=None, connect=None, timeout=None)


def _run_certs(args: argparse.Namespace, _settings: Any) -> NoReturn:
    from .certs import DEFAULT_SANS, write_bundle

    try:
        written = write_bundle(args.directory, args.name, (*DEFAULT_SANS, *args.san))
    except (OSError, ValueError) as e:
        print(f"yotonnet certs: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    for what, where in written.items():
        print(f"{what}: {where}")
    raise SystemExit(0)


def _run_passwd(args: argparse.Namespace, _settings: Any) -> NoReturn:
    from .auth import hash_password

    if ":" in args.user or not args.user.strip():
        print("yotonnet passwd: error: USER must be non-empty, without ':'", file=sys.stderr)
        raise SystemExit(2)
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("yotonnet passwd: error: the passwords differ", file=sys.stderr)
            raise SystemExit(1)
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        print("yotonnet passwd: error: use at least 8 characters", file=sys.stderr)
        raise SystemExit(1)
    print(f"{args.user}:{hash_password(password)}")
    raise SystemExit(0)
