"""The ``mailexpress`` command.

Exit status of ``send``: 0 sent; 1 the server refused (the message was not
sent, or not to everyone); 2 the command could not run (bad config or
arguments, server unreachable, TLS or authentication failure).

Exit status of ``test-connector``: 0 every required check passed; 1 something
is wrong with the connector; 2 the diagnosis could not run (bad config).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from . import __version__, cli_send_many
from .client import SendResult, send_as
from .config import Config, load_config, template
from .diagnose import CHECK_IDS, test_connector
from .errors import ConfigError, Error, RefusedError

__all__ = ["main"]


def _print_transcript(transcript: Sequence[tuple[int, str, str]], out: TextIO | None = None) -> None:
    arrows = {"C": "C:", "S": "S:", "*": "  "}
    for ms, direction, text in transcript:
        print(f"  {ms:5d} ms  {arrows.get(direction, direction)} {text}", file=out)


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        from .testing import ConnectorEmulator, User
    except ImportError as exc:
        print(f"mailexpress demo: {exc}", file=sys.stderr)
        return 2
    password = secrets.token_urlsafe(12)
    account = User("svc-mailer", password, "svc-mailer@corp.example", rights="authoritative_domain")
    # basic authentication only (an Exchange connector also offers GSSAPI NTLM,
    # which mailexpress would prefer): the demo shows the AUTH LOGIN it says
    with ConnectorEmulator(users=[account], authoritative_domains=["corp.example"],
                           other_mechanisms=()) as emulator:
        cfg = emulator.config(reply_to_address="helpdesk@corp.example")
        print("mailexpress demo: an Exchange-like client connector runs on "
              f"{emulator.host}:{emulator.port} (STARTTLS, AUTH LOGIN after TLS).")
        print(f"The service account {account.username!r} holds "
              "ms-Exch-SMTP-Accept-Authoritative-Domain-Sender, not Accept-Any-Sender.\n")
        print(f"config: {cfg!r}\n")
        print("1. send_as('alice@corp.example', to=['bob@partner.example'], reply_to='helpdesk@corp.example')")
        result: SendResult = send_as(cfg, "alice@corp.example", to=["bob@partner.example"],
                                     subject="Your package is ready",
                                     body="Hello Bob,\n\nyour package is ready for pick-up.\n"
                                          ".this line starts with a dot\n\nAlice\n")
        print("   the SMTP exchange (credentials redacted at the source):")
        _print_transcript(result.transcript)
        print(f"\n   result: {result}\n")
        received = emulator.messages[-1]
        print(f"   the server received (envelope {received.mail_from} -> {', '.join(received.rcpt_tos)}):")
        for line in received.data.decode("utf-8", "replace").splitlines():
            print(f"   | {line}")
        print("\n2. send_as('ceo@partner.example', ...): an external sender needs Accept-Any-Sender")
        try:
            send_as(cfg, "ceo@partner.example", to=["bob@partner.example"], subject="x", body="x")
        except RefusedError as exc:
            print(f"   refused as expected at {exc.stage}: {exc.reply}")
        else:
            print("   unexpectedly accepted", file=sys.stderr)
            return 1
        print(f"\n{len(emulator.messages)} message accepted; no password was printed.")
    return 0


_CONFIG_FLAGS = ("host", "port", "security", "username", "password_env", "from_address",
                 "reply_to_address", "ca_file", "server_family", "connector_name", "service_account",
                 "probe_authoritative_sender", "probe_external_sender", "probe_recipient")


def _config_from_args(args: argparse.Namespace, command: str) -> Config | None:
    """The config file, environment and flags; None (after saying why) on error."""
    overrides: dict[str, Any] = {}
    for key in _CONFIG_FLAGS:
        value = getattr(args, key, None)
        if value is not None:
            overrides[key] = value
    if getattr(args, "insecure", False):
        overrides["verify"] = False
    try:
        return load_config(args.config, **overrides)
    except ConfigError as exc:
        print(f"mailexpress {command}: {exc}", file=sys.stderr)
        return None


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="TOML config file (default $MAILEXPRESS_CONFIG)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--security", choices=["starttls", "ssl", "none"])
    p.add_argument("--username")
    p.add_argument("--password-env", dest="password_env",
                   help="environment variable holding the password (never pass a password as a flag)")
    p.add_argument("--ca-file", dest="ca_file", help="PEM file of trusted CAs")


def _cmd_config_init(args: argparse.Namespace) -> int:
    path = args.path
    if path == "-":
        print(template())
        return 0
    if os.path.exists(path) and not args.force:
        print(f"mailexpress config init: {path} exists (use --force to overwrite)", file=sys.stderr)
        return 2
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(template())
    print(f"wrote {path}: set host, username and password_env (for Exchange Online: oauth_tenant, "
          f"oauth_client_id and oauth_client_secret_env instead, docs/oauth.md), then: "
          f"mailexpress test-connector --config {path}")
    return 0


def _cmd_config_show(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args, "config show")
    if cfg is None:
        return 2
    data = cfg.to_dict()
    if args.json:
        print(json.dumps({"settings": data, "sources": cfg.sources}, indent=2, default=str))
        return 0
    width = max(len(k) for k in data)
    for key, value in data.items():
        source = cfg.sources.get(key, "argument")
        print(f"{key.ljust(width)}  {value!r}  ({source})")
    return 0


def _cmd_test_connector(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args, "test-connector")
    if cfg is None:
        return 2
    try:
        report = test_connector(cfg, deep=args.deep, require=args.require, senders=args.sender)
    except ConfigError as exc:
        print(f"mailexpress test-connector: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.render(colour=_use_colour(args.color, sys.stdout)))
    return 0 if report.ok else 1


def _use_colour(choice: str, stream: TextIO) -> bool:
    """--color: always, never, or auto = only on a terminal, and not when
    NO_COLOR is set (https://no-color.org) or TERM is dumb."""
    if choice != "auto":
        return choice == "always"
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return hasattr(stream, "isatty") and stream.isatty()


def _cmd_send(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args, "send")
    if cfg is None:
        return 2
    body = sys.stdin.read() if args.body == "-" else args.body
    try:
        result = send_as(cfg, args.sender, to=args.to, cc=args.cc, subject=args.subject, body=body)
    except RefusedError as exc:
        print(f"mailexpress send: refused at {exc.stage}: {exc}", file=sys.stderr)
        return 1
    except Error as exc:
        print(f"mailexpress send: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result)
    if args.verbose:   # with --json on stderr, so stdout stays one JSON document
        _print_transcript(result.transcript, out=sys.stderr if args.json else None)
    return 0 if result.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailexpress", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mailexpress {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="send through the built-in connector emulator (offline)")
    demo.set_defaults(func=_cmd_demo)

    tc = sub.add_parser("test-connector", help="diagnose the connector: TLS, auth, anonymous, impersonation")
    _add_config_flags(tc)
    tc.add_argument("--from-address", dest="from_address", help="the account's own From address")
    tc.add_argument("--server-family", dest="server_family", help="for advice, e.g. exchange2016")
    tc.add_argument("--connector-name", dest="connector_name", help="for advice: the receive connector's name")
    tc.add_argument("--service-account", dest="service_account", help="for advice: DOMAIN\\account")
    tc.add_argument("--probe-authoritative-sender", dest="probe_authoritative_sender")
    tc.add_argument("--probe-external-sender", dest="probe_external_sender")
    tc.add_argument("--probe-recipient", dest="probe_recipient")
    tc.add_argument("--sender", action="append", default=[], metavar="ADDRESS",
                    help="also probe whether the account may send as ADDRESS (repeatable)")
    tc.add_argument("--require", action="append", default=[], choices=CHECK_IDS, metavar="CHECK",
                    help="a check that must pass (repeatable), e.g. accept_any_sender")
    tc.add_argument("--deep", action="store_true",
                    help="also send one real message per allowed sender to the probe recipient")
    tc.add_argument("--insecure", action="store_true", help="do not verify the certificate (diagnosis only)")
    tc.add_argument("--json", action="store_true", help="print the report as JSON (docs/diagnosis.md)")
    tc.add_argument("--color", "--colour", dest="color", choices=["auto", "always", "never"], default="auto",
                    help="colour the status marks: auto (on a terminal, unless NO_COLOR is set), always, never")
    tc.set_defaults(func=_cmd_test_connector)

    conf = sub.add_parser("config", help="write a config template, or show the effective config")
    csub = conf.add_subparsers(dest="config_command", required=True)
    init = csub.add_parser("init", help="write a commented config template")
    init.add_argument("path", nargs="?", default="mailexpress.toml", help="file to write, or - for stdout")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(func=_cmd_config_init)
    show = csub.add_parser("show", help="the effective config and where each value came from (password masked)")
    _add_config_flags(show)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=_cmd_config_show)

    send = sub.add_parser("send", help="send one message as a given sender")
    _add_config_flags(send)
    send.add_argument("--from", dest="sender", help="From address (default: from_address)")
    send.add_argument("--reply-to", dest="reply_to_address")
    send.add_argument("--to", action="append", required=True, help="recipient (repeatable)")
    send.add_argument("--cc", action="append", default=[])
    send.add_argument("--subject", default="")
    send.add_argument("--body", default="", help="message text, or - to read standard input")
    send.add_argument("--verbose", "-v", action="store_true", help="print the SMTP exchange")
    send.add_argument("--json", action="store_true", help="print the result as JSON")
    send.set_defaults(func=_cmd_send)
    cli_send_many.register(sub, _add_config_flags, _config_from_args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
