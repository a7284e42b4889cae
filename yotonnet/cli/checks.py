"""From a command line to checked arguments and settings, before any network activity.

:func:`parse` parses the command line, checks what argparse cannot (channel
names, JSON, counts) and resolves the settings (flags over the TOML file);
usage errors print the usage and exit with status 2.
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from ..core.names import validate_channel_name
from ..service.config import ConfigError, Settings, resolve
from .output import loads
from .parser import build_parser
from .security import flags as security_flags


def _usage(args: argparse.Namespace, message: str) -> NoReturn:
    args.parser.error(message)  # prints usage and the message, exits 2
    raise AssertionError("unreachable")


def _parse_json(args: argparse.Namespace, text: str, what: str) -> Any:
    try:
        return loads(text)
    except ValueError as e:
        _usage(args, f"{what} is not valid JSON ({e}): {text!r}")


def _value_of_type(args: argparse.Namespace, text: str, what: str) -> Any:
    if args.type == "object":
        return _parse_json(args, text, what)
    if args.type == "binary":
        return text.encode("utf-8", "surrogateescape")
    return text


def _check_args(args: argparse.Namespace) -> None:
    """Usage errors (exit 2) found before connecting: names, JSON, counts."""
    if getattr(args, "channel", None) is not None:
        try:
            validate_channel_name(args.channel)
        except ValueError as e:
            _usage(args, str(e))
    command = args.command
    if command == "pub":
        args.values = [_value_of_type(args, m, "MESSAGE") for m in args.messages]
        if args.wait < 0:
            _usage(args, "--wait must be >= 0")
    elif command == "sub":
        if args.count is not None and args.count < 1:
            _usage(args, "--count must be >= 1")
    elif command == "call":
        call_args = _parse_json(args, args.args, "ARGS")
        if not isinstance(call_args, list):
            _usage(args, f"ARGS must be a JSON list of arguments, like '[2, 3]', not {args.args!r}")
        args.call_args = call_args
        kwargs = {} if args.kwargs is None else _parse_json(args, args.kwargs, "--kwargs")
        if not isinstance(kwargs, dict):
            _usage(args, f"--kwargs must be a JSON object like '{{\"x\": 1}}', "
                         f"not {args.kwargs!r}")
        args.call_kwargs = kwargs
    elif command == "state" and args.action == "set":
        args.state_value = _value_of_type(args, args.value, "VALUE")
    elif command == "bench":
        for flag in ("messages", "size", "calls"):
            if getattr(args, flag) < 1:
                _usage(args, f"--{flag} must be >= 1")


def _settings(args: argparse.Namespace) -> Settings:
    try:
        if args.command == "node":
            return resolve(
                args.config, name=args.name, listen=args.listen, peers=args.peer,
                status=args.status, status_hosts=args.status_host,
                status_token=args.status_token, log_format=args.log_format,
                security=security_flags(args),
            )
        if args.command == "kernel":  # a client, and a node too when it listens or dials
            return resolve(
                args.config, name=args.node_name, listen=args.listen, peers=args.peer,
                connect=args.connect, timeout=args.timeout, security=security_flags(args),
            )
        return resolve(
            args.config, connect=args.connect, timeout=args.timeout,
            security=security_flags(args),
        )
    except ConfigError as e:
        _usage(args, str(e))


def parse(argv: list[str]) -> tuple[argparse.Namespace, Settings]:
    """Arguments and settings of a command line; usage errors exit 2 (SystemExit)."""
    args = build_parser().parse_args(argv)
    _check_args(args)
    return args, _settings(args)
