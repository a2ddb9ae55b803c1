"""Shared test helpers: accounts and a plain Session factory."""
from __future__ import annotations

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
