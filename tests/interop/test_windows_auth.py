"""GSSAPI (Kerberos) and NTLM against real peers (see kerberos_harness.py):
an MIT KDC for CORP.EXAMPLE and a Postfix + Dovecot offering ``AUTH GSSAPI
NTLM`` -- an Exchange client connector with Basic authentication off.

Each peer is first checked with an independent client (GNU gsasl for GSSAPI,
swaks for NTLM), so that a failure of mailexpress is told apart from a broken
set-up."""
from __future__ import annotations

import base64
import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import clean_env, serving
from kerberos_harness import (KERBEROS_USERS, NTLM_DOMAIN, NTLM_USER, REALM, SERVICE_HOST, KerberosRealm,
                              WindowsAuthHarness, missing_requirements)

import mailexpress as mx

TIMEOUTS = {"connect": 5, "banner": 10, "ehlo": 10, "tls": 10, "auth": 20, "mail": 10, "rcpt": 10,
            "data": 10, "end_of_data": 60, "command": 10, "quit": 5}


# -- the peers ---------------------------------------------------------------------

def _requirements() -> None:
    why = missing_requirements()
    if why and os.geteuid() != 0:
        pytest.skip(f"interop suite cannot run here: {why}")
    if why:        # CI installs everything (install-servers.sh): a missing piece is a failure
        pytest.fail(f"the Windows-authentication peers cannot run: {why}")


@pytest.fixture(scope="module")
def realm() -> Iterator[KerberosRealm]:
    _requirements()
    yield from serving(None, KerberosRealm)


@pytest.fixture(scope="module")
def winauth(realm: KerberosRealm) -> Iterator[WindowsAuthHarness]:
    yield from serving(None, lambda: WindowsAuthHarness(realm))


@pytest.fixture
def ticket(realm: KerberosRealm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """kinit(user) -> the private ccache, now this process's KRB5CCNAME."""
    monkeypatch.setenv("KRB5_CONFIG", str(realm.krb5_conf))

    def kinit(user: str = "alice", lifetime: str | None = None) -> Path:
        cc = tmp_path / f"cc.{user}"
        realm.kinit(user, KERBEROS_USERS[user][0], cc, lifetime)
        monkeypatch.setenv("KRB5CCNAME", f"FILE:{cc}")
        return cc
    return kinit


def wcfg(h: WindowsAuthHarness, mechanism: str, **kw: object) -> mx.Config:
    """A config for the harness's submission service (STARTTLS, AUTH after TLS)."""
    values: dict[str, object] = {
        "host": "127.0.0.1", "port": h.ports["submission"], "server_name": SERVICE_HOST,
        "ca_file": h.ca_file, "security": "starttls", "auth_mechanisms": [mechanism], "timeouts": TIMEOUTS,
    }
    if mechanism == "NTLM":
        values.update(username=f"{NTLM_DOMAIN}\\{NTLM_USER[0]}", password=NTLM_USER[1], from_address=NTLM_USER[2])
    else:
        values.update(kerberos_service="smtp", from_address=KERBEROS_USERS["alice"][1])
    values.update(kw)
    return mx.Config(**values)  # type: ignore[arg-type]


def marker() -> str:
    return f"winauth-{uuid.uuid4().hex[:12]}"


def delivered_copy(h: WindowsAuthHarness, mark: str, sent: bytes) -> bytes:
    """What virtual(8) stored, checked to end with exactly the bytes sent."""
    got = h.wait_for(mark.encode()).data
    assert got.endswith(sent.replace(b"\r\n", b"\n")), "the delivered message differs from what was sent"
    return got


def assert_nothing_delivered(h: WindowsAuthHarness, mark: str) -> None:
    assert not [m for m in h.delivered() if mark.encode() in m.data]
    assert f"Subject: {mark}" not in h.log()


def eventually(check: Callable[[], bool], timeout: float = 10) -> bool:
    """check() turns true within timeout: Postfix (postlogd) and Dovecot (its
    log service) write their logs a moment after the reply has gone out."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def quiet_log(h: WindowsAuthHarness, quiet: float = 0.5) -> str:
    """The servers' log once nothing has been added to it for `quiet` seconds."""
    last = h.log()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = h.log()
        if now == last:
            break
        last = now
    return last


def dovecot_logins(h: WindowsAuthHarness) -> list[str]:
    """The user names Dovecot answered OK for (its auth_debug log), in order."""
    return re.findall(r"client passdb out: OK\t\d+\tuser=(\S+)", h.log())


def gssapi_attempts(h: WindowsAuthHarness) -> int:
    """How many AUTH GSSAPI exchanges reached Dovecot (once its log is quiet)."""
    return len(re.findall(r"client in: AUTH\t\d+\tGSSAPI", quiet_log(h)))


def postfix_logins(h: WindowsAuthHarness) -> list[tuple[str, str]]:
    """Postfix's record of each accepted transaction's login: (method, user)."""
    return re.findall(r"sasl_method=(\w+), sasl_username=(\S+)", h.log())


# -- the peers, checked with independent clients ---------------------------------------

def _gsasl(realm: KerberosRealm, h: WindowsAuthHarness, ccache: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["gsasl", "--smtp", "--starttls", f"--x509-ca-file={h.ca_file}", "--mechanism", "GSSAPI",
                           "--service", "smtp", "--hostname", SERVICE_HOST, "127.0.0.1", str(h.ports["submission"])],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                          env=realm.env(KRB5CCNAME=ccache))


def test_gsasl_authenticates_with_gssapi(realm, winauth, tmp_path):
    cc = tmp_path / "cc"
    realm.kinit("alice", KERBEROS_USERS["alice"][0], cc)
    assert f"smtp/{SERVICE_HOST}@{REALM}" not in realm.klist(cc)
    run = _gsasl(realm, winauth, f"FILE:{cc}")
    assert "250-AUTH GSSAPI NTLM" in run.stdout
    assert "235 2.7.0 Authentication successful" in run.stdout, run.stdout + run.stderr
    # the client got a service ticket for the SPN from our KDC on the way
    assert f"smtp/{SERVICE_HOST}@{REALM}" in realm.klist(cc)
    assert eventually(lambda: dovecot_logins(winauth)[-1:] == [f"alice@{REALM}"])


def test_gsasl_without_a_ticket_fails_in_the_client(realm, winauth, tmp_path):
    run = _gsasl(realm, winauth, f"FILE:{tmp_path / 'empty'}")
    assert "235" not in run.stdout and run.returncode != 0
    assert "gss_init_sec_context" in run.stderr


def _swaks(h: WindowsAuthHarness, password: str, mark: str) -> subprocess.CompletedProcess[str]:
    user, _pw, addr = NTLM_USER
    return subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(h.ports["submission"]), "--tls",
                           "--auth", "NTLM", "--auth-user", user, "--auth-password", password,
                           "--from", addr, "--to", "someone@partner.example", "--header", f"Subject: {mark}"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, env=clean_env())


def test_swaks_sends_with_ntlm(winauth):
    mark = marker()
    run = _swaks(winauth, NTLM_USER[1], mark)
    assert "<~  235 2.7.0 Authentication successful" in run.stdout, run.stdout
    assert winauth.wait_for(mark.encode())
    # swaks copies the domain from the challenge's target name: CORP
    assert eventually(lambda: ("NTLM", f"{NTLM_USER[0]}@{NTLM_DOMAIN}") in postfix_logins(winauth))


def test_swaks_wrong_ntlm_password_is_refused(winauth):
    mark = marker()
    run = _swaks(winauth, "not-the-password", mark)
    assert "<~* 535 5.7.8" in run.stdout, run.stdout
    assert eventually(lambda: "NT_STATUS_LOGON_FAILURE" in winauth.log())
    assert_nothing_delivered(winauth, mark)


# -- mailexpress ------------------------------------------------------------------------

EXACT = (b"From: {addr}\r\nTo: someone@partner.example\r\nSubject: {mark}\r\n\r\n"
         b".leading dot\r\n..two dots\r\n.\r\n" + b"L" * 998 + b"\r\nlast line without newline")


def _exact(addr: str, mark: str) -> bytes:
    return EXACT.replace(b"{addr}", addr.encode()).replace(b"{mark}", mark.encode())


def client_lines(session_or_exc: object) -> list[str]:
    return [t for _ms, d, t in getattr(session_or_exc, "transcript") if d == "C"]


def test_gssapi_delivers_byte_exact(realm, winauth, ticket):
    cc = ticket("alice")
    mark = marker()
    raw = _exact(KERBEROS_USERS["alice"][1], mark)
    with mx.connect(wcfg(winauth, "GSSAPI")) as s:
        assert s.authenticated and s.tls_active
        assert s.capabilities["AUTH"] == "GSSAPI NTLM"
        s.send(raw, envelope_from=KERBEROS_USERS["alice"][1], recipients=["someone@partner.example"])
        sent = client_lines(s)
    assert any(line.startswith("AUTH GSSAPI") for line in sent)
    delivered_copy(winauth, mark, raw + b"\r\n")
    assert eventually(lambda: postfix_logins(winauth)[-1:] == [("GSSAPI", f"alice@{REALM}")])
    assert f"smtp/{SERVICE_HOST}@{REALM}" in realm.klist(cc)     # the ticket mailexpress asked our KDC for


def test_gssapi_send_as(winauth, ticket):
    ticket("alice")
    mark = marker()
    res = mx.send_as(wcfg(winauth, "GSSAPI"), KERBEROS_USERS["alice"][1], to="someone@partner.example",
                     subject=mark, body="sent with a Kerberos ticket\n")
    assert res.ok
    assert b"sent with a Kerberos ticket" in winauth.wait_for(mark.encode()).data


def test_ntlm_delivers_byte_exact(winauth):
    mark = marker()
    addr = NTLM_USER[2]
    raw = _exact(addr, mark)
    with mx.connect(wcfg(winauth, "NTLM")) as s:
        assert s.authenticated and s.tls_active
        s.send(raw, envelope_from=addr, recipients=["someone@partner.example"])
        sent = client_lines(s)
        shown = repr(s) + "\n".join(sent)
    assert any(line.startswith("AUTH NTLM") for line in sent)
    delivered_copy(winauth, mark, raw + b"\r\n")
    # CORP\bob arrives at Dovecot as bob@CORP: the domain went in the NTLM message
    assert eventually(lambda: postfix_logins(winauth)[-1:] == [("NTLM", f"{NTLM_USER[0]}@{NTLM_DOMAIN}")])
    assert NTLM_USER[1] not in shown


def test_wrong_ntlm_password_is_an_auth_error_and_no_mail(winauth):
    mark = marker()
    with pytest.raises(mx.AuthError) as info:
        mx.send_as(wcfg(winauth, "NTLM", password="not-the-password"), NTLM_USER[2], to="someone@partner.example",
                   subject=mark, body="must not arrive\n")
    err = info.value
    assert err.code == 535 and err.enhanced == "5.7.8" and err.stage is mx.Stage.AUTH
    assert err.mechanism == "NTLM"
    assert "not-the-password" not in str(err) + repr(err)
    assert eventually(lambda: "NT_STATUS_LOGON_FAILURE" in winauth.log())
    assert_nothing_delivered(winauth, mark)


def test_no_ticket_is_a_clear_error_and_no_mail(winauth, realm, tmp_path, monkeypatch):
    monkeypatch.setenv("KRB5_CONFIG", str(realm.krb5_conf))
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{tmp_path / 'no-ticket'}")       # an empty cache
    mark = marker()
    before = gssapi_attempts(winauth)
    with pytest.raises(mx.AuthError) as info:
        mx.send_as(wcfg(winauth, "GSSAPI"), KERBEROS_USERS["alice"][1], to="someone@partner.example",
                   subject=mark, body="must not arrive\n")
    err = info.value
    assert err.stage is mx.Stage.AUTH and err.mechanism == "GSSAPI"
    assert "kinit" in str(err) and f"smtp/{SERVICE_HOST}" in str(err), str(err)
    assert gssapi_attempts(winauth) == before           # found out before AUTH was sent
    assert_nothing_delivered(winauth, mark)


def test_expired_ticket_is_a_clear_error_and_no_mail(winauth, ticket):
    ticket("alice", lifetime="2s")
    time.sleep(3)
    mark = marker()
    before = gssapi_attempts(winauth)
    with pytest.raises(mx.AuthError) as info:
        mx.send_as(wcfg(winauth, "GSSAPI"), KERBEROS_USERS["alice"][1], to="someone@partner.example",
                   subject=mark, body="must not arrive\n")
    assert info.value.mechanism == "GSSAPI" and "expired" in str(info.value).lower(), str(info.value)
    assert "kinit" in str(info.value)
    assert gssapi_attempts(winauth) == before
    assert_nothing_delivered(winauth, mark)


def test_server_keytab_out_of_date(realm, winauth, ticket):
    """The KDC has new keys for smtp/mail.corp.example, the server's keytab the
    old ones: the client gets a ticket, the server cannot read it (535); the
    diagnosis points at the SPN and keytab."""
    realm.rekey_service()
    try:
        ticket("alice")
        mark = marker()
        with pytest.raises(mx.AuthError) as info:
            mx.send_as(wcfg(winauth, "GSSAPI"), KERBEROS_USERS["alice"][1], to="someone@partner.example",
                       subject=mark, body="must not arrive\n")
        err = info.value
        assert err.code == 535 and err.mechanism == "GSSAPI" and err.stage is mx.Stage.AUTH
        assert eventually(lambda: "keytab is likely out of date" in winauth.log())
        assert_nothing_delivered(winauth, mark)
        check = mx.test_connector(wcfg(winauth, "GSSAPI")).check("auth")
        assert check.status == "fail" and "535" in check.summary
        assert "SMTP/mail.corp.example" in check.advice and "setspn" in check.advice, check.advice
    finally:
        realm.export_keytab()
    ticket("alice")                                     # a fresh service ticket: the mended keytab reads it
    with mx.connect(wcfg(winauth, "GSSAPI")) as s:
        assert s.authenticated


def test_gssapi_needs_no_tls_but_ntlm_does(winauth, ticket):
    """GSSAPI exposes no secret: allowed on the service without TLS; NTLM's
    responses can be cracked offline: refused there unless opted in, before
    anything is sent."""
    ticket("alice")
    with mx.connect(wcfg(winauth, "GSSAPI", port=winauth.ports["insecure"], security="none")) as s:
        assert s.authenticated and not s.tls_active
    ntlm_attempts = len(re.findall(r"client in: AUTH\t\d+\tNTLM", quiet_log(winauth)))
    with pytest.raises(mx.InsecureAuthError):
        mx.connect(wcfg(winauth, "NTLM", port=winauth.ports["insecure"], security="none"))
    assert len(re.findall(r"client in: AUTH\t\d+\tNTLM", quiet_log(winauth))) == ntlm_attempts


def test_connector_with_gssapi(winauth, ticket):
    ticket("alice")
    report = mx.test_connector(wcfg(winauth, "GSSAPI"))
    checks = {c.id: c.status for c in report.checks}
    assert checks["auth"] == "pass" and checks["tls"] == "pass", str(report)
    verdicts = {s.kind: s.verdict for s in report.senders}
    assert verdicts == {"self": "allowed", "authoritative_domain": "refused_at_mail",
                        "external": "refused_at_mail"}, str(report)
    assert report.check("auth_mechanisms").status == "pass" and "GSSAPI NTLM" in report.check("auth_mechanisms").summary
    auth = report.check("auth")
    assert "GSSAPI" in auth.summary
    # with a ticket there is no configured user name: the report must not call it None
    assert "None" not in auth.summary, auth.summary


def test_connector_with_a_principal_that_may_send_as_nobody(winauth, ticket):
    """carol has a real ticket: Kerberos lets her in, the connector's rights
    (Postfix's sender-login map) refuse her own address."""
    ticket("carol")
    report = mx.test_connector(wcfg(winauth, "GSSAPI", from_address=KERBEROS_USERS["carol"][1]))
    assert report.check("auth").status == "pass", str(report)
    assert {s.kind: s.verdict for s in report.senders}["self"] == "refused_at_mail", str(report)
    assert not report.ok


def test_connector_without_a_ticket(winauth, realm, tmp_path, monkeypatch):
    monkeypatch.setenv("KRB5_CONFIG", str(realm.krb5_conf))
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{tmp_path / 'no-ticket'}")
    report = mx.test_connector(wcfg(winauth, "GSSAPI"))
    assert report.check("auth_mechanisms").status == "pass"
    auth = report.check("auth")
    assert auth.status == "fail" and not report.ok, str(report)
    assert "kinit" in auth.summary and "klist" in auth.advice and "SMTP/mail.corp.example" in auth.advice, str(report)
    assert "None" not in auth.summary, "the report names no account as None: " + auth.summary
    assert report.check("send_as_self").status == "skip"


def test_connector_with_ntlm(winauth):
    report = mx.test_connector(wcfg(winauth, "NTLM"))
    assert report.check("auth").status == "pass", str(report)
    assert {s.kind: s.verdict for s in report.senders}["self"] == "allowed", str(report)


def test_connector_with_a_wrong_ntlm_password(winauth):
    report = mx.test_connector(wcfg(winauth, "NTLM", password="not-the-password"))
    auth = report.check("auth")
    assert auth.status == "fail" and not report.ok, str(report)
    assert "535" in str(report) and "not-the-password" not in str(report)


def test_ntlm_password_never_reaches_the_logs(winauth):
    log = quiet_log(winauth)
    pw = NTLM_USER[1]
    assert pw not in log and base64.b64encode(pw.encode()).decode() not in log


def auth_exchange(session: mx.Session) -> list[str]:
    """The client's lines from AUTH up to the server's 235, as the transcript shows them."""
    lines = [(d, t) for _ms, d, t in session.transcript]
    start = next(i for i, (d, t) in enumerate(lines) if d == "C" and t.startswith("AUTH "))
    end = next(i for i, (d, t) in enumerate(lines) if i > start and d == "S" and t.startswith("235"))
    return [t for d, t in lines[start:end] if d == "C"]


def test_round_trips_and_redaction(winauth, ticket):
    """GSSAPI: AP-REQ on the AUTH line, empty answer to the AP-REP, the wrapped
    security layer: 3.  NTLM: NEGOTIATE on the AUTH line, AUTHENTICATE: 2."""
    ticket("alice")
    with mx.connect(wcfg(winauth, "GSSAPI")) as s:
        assert auth_exchange(s) == ["AUTH GSSAPI <response redacted>"] + ["<response redacted>"] * 2
        # Dovecot's offer, as it is on the wire (RFC 4121 wrap token, not sealed)
        offer = [t for _ms, d, t in s.transcript if d == "S" and t.startswith("334 ")][-1]
        assert base64.b64decode(offer[4:])[:4] == b"\x05\x04\x05\xff"
    with mx.connect(wcfg(winauth, "NTLM")) as s:
        assert auth_exchange(s) == ["AUTH NTLM <response redacted>", "<response redacted>"]


def test_automatic_order_takes_the_ticket_first_then_ntlm(winauth, ticket, realm, monkeypatch, tmp_path):
    """auth_mechanisms left automatic, NTLM credentials configured: with a
    ticket GSSAPI goes first; without one, NTLM."""
    auto = {"auth_mechanisms": "automatic", "username": f"{NTLM_DOMAIN}\\{NTLM_USER[0]}",
            "password": NTLM_USER[1]}
    ticket("alice")
    with mx.connect(wcfg(winauth, "GSSAPI", **auto)) as s:
        assert auth_exchange(s)[0].startswith("AUTH GSSAPI")
    assert eventually(lambda: dovecot_logins(winauth)[-1:] == [f"alice@{REALM}"])
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{tmp_path / 'no-ticket'}")
    with mx.connect(wcfg(winauth, "NTLM", **auto)) as s:
        assert auth_exchange(s)[0].startswith("AUTH NTLM")
    assert eventually(lambda: dovecot_logins(winauth)[-1:] == [f"{NTLM_USER[0]}@{NTLM_DOMAIN}"])


def test_gssapi_with_username_and_password_gets_its_own_ticket(winauth, realm, monkeypatch, tmp_path):
    """No ticket cache, but the principal's password in the config: pyspnego
    asks the KDC for the tickets itself (no kinit, nothing written to the cache)."""
    monkeypatch.setenv("KRB5_CONFIG", str(realm.krb5_conf))
    cache = tmp_path / "untouched"
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{cache}")
    mark = marker()
    res = mx.send_as(wcfg(winauth, "GSSAPI", username="alice", password=KERBEROS_USERS["alice"][0]),
                     KERBEROS_USERS["alice"][1], to="someone@partner.example", subject=mark, body="no kinit\n")
    assert res.ok and winauth.wait_for(mark.encode())
    assert eventually(lambda: postfix_logins(winauth)[-1:] == [("GSSAPI", f"alice@{REALM}")])
    assert not cache.exists()


def test_wrong_kerberos_service_is_named_before_auth(winauth, ticket):
    """kerberos_service names a principal the realm does not have: the KDC
    refuses the service ticket, so nothing reaches the server, and the error
    names the SPN asked for and the setting."""
    ticket("alice")
    before = gssapi_attempts(winauth)
    with pytest.raises(mx.AuthError) as info:
        mx.connect(wcfg(winauth, "GSSAPI", kerberos_service="imap"))
    text = str(info.value)
    assert f"imap/{SERVICE_HOST}" in text and "kerberos_service" in text, text
    assert "not found in Kerberos database" in text
    assert gssapi_attempts(winauth) == before


def test_send_many_with_gssapi(winauth, ticket):
    ticket("alice")
    addr = KERBEROS_USERS["alice"][1]
    marks = [marker() for _ in range(10)]
    result = mx.send_many(wcfg(winauth, "GSSAPI"), [{"to": "someone@partner.example", "subject": m,
                                                     "body": f"bulk over Kerberos {i}\n"} for i, m in enumerate(marks)],
                          sender=addr)
    assert not result.failed, result
    for i, m in enumerate(marks):
        assert f"bulk over Kerberos {i}".encode() in winauth.wait_for(m.encode()).data
