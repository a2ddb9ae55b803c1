"""Shared test helpers: accounts, a plain Session factory, a fake server's AUTH script."""
from __future__ import annotations

from fakeserver import greet

import mailexpress as mx
from mailexpress.testing import User

SVC = User("svc-mailer", "S3cret-pässword!", "svc-mailer@corp.example", rights="authoritative_domain")
ANY = User("svc-any", "any-password-42", "svc-any@corp.example", rights="any")
SELF = User("svc-self", "self-password-42", "svc-self@corp.example", rights="self")
ALL_PASSWORDS = (SVC.password, ANY.password, SELF.password)


def plain_session(port: int, host: str = "127.0.0.1", **kw: object) -> mx.Session:
    """A Session without TLS to a fake server, short timeouts."""
    kw.setdefault("security", "none")
    kw.setdefault("timeouts", {"connect": 5, "banner": 5, "ehlo": 5, "mail": 5, "rcpt": 5,
                               "data": 5, "end_of_data": 5, "command": 5, "quit": 5,
                               "auth": 5, "starttls": 5, "tls": 5})
    kw.setdefault("ehlo_name", "client.example")
    return mx.Session(host, port, **kw)  # type: ignore[arg-type]


def connected(fake_server, script, **kw: object) -> tuple[object, mx.Session]:  # type: ignore[no-untyped-def]
    """The fake server running script, and a plain_session(**kw) connected
    to it (greeting read)."""
    srv = fake_server(script)
    s = plain_session(srv.port, **kw)
    s.connect()
    return srv, s


# AUTH LOGIN's two prompts, "Username:" and "Password:"
LOGIN_PROMPTS = (b"334 VXNlcm5hbWU6\r\n", b"334 UGFzc3dvcmQ6\r\n")


def answer(conn, auth: bytes, *replies: bytes) -> None:  # type: ignore[no-untyped-def]
    """The AUTH line (starting with `auth`) answered with the first reply,
    each later client line with the next one; then whatever follows is
    read (QUIT, or EOF when the client closes)."""
    conn.expect(auth)
    for i, reply in enumerate(replies):
        if i:
            conn.readline()
        conn.send(reply)
    conn.readline()


def answering(auth: bytes, *replies: bytes,  # type: ignore[no-untyped-def]
              offer: bytes | list[bytes] = b"AUTH LOGIN XOAUTH2"):
    """A fake server's script: EHLO offering `offer` (one line, or several),
    then `answer(conn, auth, *replies)`."""
    def script(conn):  # type: ignore[no-untyped-def]
        greet(conn, offer if isinstance(offer, list) else [offer])
        answer(conn, auth, *replies)
    return script


# -- the rule: what test_connector says of an address is what send_as does -----------

STAGE_OF_ERROR = {"SenderRefused": "MAIL", "RecipientsRefused": "RCPT", "DataRefused": "END_OF_DATA"}


def send_as_outcome(cfg: mx.Config, address: str, recipient: str) -> tuple[str, str | None]:
    """("allowed", None) or ("refused", stage) or ("error", text): what
    send_as(cfg, address, to=recipient) did."""
    try:
        mx.send_as(cfg, address, to=recipient, subject="verdict matrix", body="checking the report\n")
        return "allowed", None
    except (mx.SenderRefused, mx.RecipientsRefused, mx.DataRefused) as exc:
        if exc.transient:
            return "error", f"transient: {exc}"
        return "refused", STAGE_OF_ERROR[type(exc).__name__]
    except mx.Error as exc:
        return "error", str(exc)


def agreement(cfg: mx.Config, report: mx.ConnectorReport) -> list[tuple[str, str, str, bool]]:
    """For every probed address with a decided answer (allowed or refused):
    (address, the report's answer, what send_as did, agree?).  A refusal
    agrees only at the stage the report names."""
    recipient = cfg.probe_recipient or cfg.from_address
    assert recipient
    rows = []
    for probe in report.senders:
        if probe.send_as not in ("allowed", "refused"):
            continue
        did, stage = send_as_outcome(cfg, probe.address, recipient)
        said = probe.send_as if probe.send_as == "allowed" else f"refused at {probe.stage}"
        got = did if did != "refused" else f"refused at {stage}"
        rows.append((probe.address, said, got, said == got))
    return rows
