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
        "certs", "make a development CA, node certificates and user certificates",
        "Write ca.pem and ca.key into DIR (kept if they exist), then NAME.pem and NAME.key,\n"
        "signed by that CA, for each --name (a node) and each --user. Keys are written\n"
        "mode 0600.\n\n"
        "A node certificate (--name) is for serving and dialling: extendedKeyUsage\n"
        "serverAuth and clientAuth, common name NODE, subjectAltNames NODE (when it is a\n"
        "DNS name) and each --san, the names other nodes dial it by, and no others (not\n"
        "localhost or 127.0.0.1 unless given). --san needs exactly one --name: run the\n"
        "command once per node (the CA is kept), so no node gets another's names.\n\n"
        "A user certificate (--user) only logs a client in: extendedKeyUsage clientAuth,\n"
        "no subjectAltName, common name USER. A node dialling a peer refuses it.\n\n"
        "examples:\n"
        "  yotonnet certs ./certs --name hub --san hub.example.org --san 10.0.0.1\n"
        "  yotonnet certs ./certs --name b --user alice --user bob",
    )
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--name", action="append", default=[], metavar="NODE",
                   help="make a node certificate for NODE; repeatable")
    p.add_argument("--san", action="append", default=[], metavar="HOST_OR_IP",
                   help="another DNS name or IP address the --name node is dialled by; "
                        "repeatable")
    p.add_argument("--user", action="append", default=[], metavar="USER",
                   help="make a user (client-only) certificate for USER; repeatable")
    p.set_defaults(run=_run_certs, config=None, connect=None, timeout=None)

    p = sub(
        "passwd", "print a passwords-file line for a user",
        "Read a password (twice, from the terminal; or one line of stdin) and print\n"
        "'USER:scrypt$...' for the node's --passwords file.",
    )
    p.add_argument("user", metavar="USER")
    p.set_defaults(run=_run_passwd, config=None, connect=None, timeout=None)


def _run_certs(args: argparse.Namespace, _settings: Any) -> NoReturn:
    from ..security.certs import write_bundle

    def usage(text: str) -> NoReturn:
        print(f"yotonnet certs: error: {text}", file=sys.stderr)
        raise SystemExit(2)

    if not args.name and not args.user:
        usage("say what to make: --name NODE (a node certificate) or --user USER")
    if args.san and len(args.name) != 1:
        usage("--san gives one node's names: use it with exactly one --name, and run "
              "`yotonnet certs` once per node that needs its own names (the CA is kept)")
    nodes = {name: (args.san if args.san else ()) for name in args.name}
    try:
        written = write_bundle(args.directory, nodes, args.user)
    except (OSError, ValueError) as e:
        print(f"yotonnet certs: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    for item in written:
        if item.kind == "ca":
            print(f"CA: {item.path} (new; its key {item.name}.key signs every certificate)")
        elif item.kind == "node":
            print(f"node {item.name}: {item.path} (serverAuth, clientAuth; "
                  f"subjectAltName {', '.join(item.sans)})")
        else:
            print(f"user {item.name}: {item.path} (clientAuth only)")
    raise SystemExit(0)


def _run_passwd(args: argparse.Namespace, _settings: Any) -> NoReturn:
    from ..security.auth import hash_password

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
