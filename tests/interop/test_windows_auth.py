"""GSSAPI (Kerberos) and NTLM against real peers (see kerberos_harness.py):
an MIT KDC for CORP.EXAMPLE and a Postfix + Dovecot offering ``AUTH GSSAPI
NTLM`` -- an Exchange client connector with Basic authentication off.

Each peer is first checked with an independent client (GNU gsasl for GSSAPI,
swaks for NTLM), so that a failure of mailexpress is told apart from a broken
set-up."""
from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
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
    r = KerberosRealm().start()
    try:
        yield r
    finally:
        r.stop()
        left = r.leftover_processes()
        assert not left, f"processes left behind: {left}"


@pytest.fixture(scope="module")
def winauth(realm: KerberosRealm) -> Iterator[WindowsAuthHarness]:
    h = WindowsAuthHarness(realm).start()
    try:
        yield h
    finally:
        h.stop()
        left = h.leftover_processes()
        assert not left, f"processes left behind: {left}"


@pytest.fixture
def ticket(realm: KerberosRealm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """kinit(user) -> the private ccache, now this process's KRB5CCNAME."""
    monkeypatch.setenv("KRB5_CONFIG", str(realm.krb5_conf))

    def kinit(user: str = "alice") -> Path:
        cc = tmp_path / f"cc.{user}"
        realm.kinit(user, KERBEROS_USERS[user][0], cc)
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


def dovecot_logins(h: WindowsAuthHarness) -> list[str]:
    """The user names Dovecot answered OK for (its auth_debug log), in order."""
    return re.findall(r"client passdb out: OK\t\d+\tuser=(\S+)", h.log())


def postfix_logins(h: WindowsAuthHarness) -> list[str]:
    """Postfix's record of each accepted transaction's login: 'METHOD user'."""
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
    assert dovecot_logins(winauth)[-1] == f"alice@{REALM}"


def test_gsasl_without_a_ticket_fails_in_the_client(realm, winauth, tmp_path):
    run = _gsasl(realm, winauth, f"FILE:{tmp_path / 'empty'}")
    assert "235" not in run.stdout and run.returncode != 0
    assert "gss_init_sec_context" in run.stderr


def _swaks(h: WindowsAuthHarness, password: str, mark: str) -> subprocess.CompletedProcess[str]:
    user, _pw, addr = NTLM_USER
    return subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(h.ports["submission"]), "--tls",
                           "--auth", "NTLM", "--auth-user", user, "--auth-password", password,
                           "--from", addr, "--to", "someone@partner.example", "--header", f"Subject: {mark}"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


def test_swaks_sends_with_ntlm(winauth):
    mark = marker()
    run = _swaks(winauth, NTLM_USER[1], mark)
    assert "<~  235 2.7.0 Authentication successful" in run.stdout, run.stdout
    assert winauth.wait_for(mark.encode())
    # swaks copies the domain from the challenge's target name: CORP
    assert ("NTLM", f"{NTLM_USER[0]}@{NTLM_DOMAIN}") in postfix_logins(winauth)


def test_swaks_wrong_ntlm_password_is_refused(winauth):
    mark = marker()
    run = _swaks(winauth, "not-the-password", mark)
    assert "<~* 535 5.7.8" in run.stdout, run.stdout
    assert "NT_STATUS_LOGON_FAILURE" in winauth.log()
    assert_nothing_delivered(winauth, mark)
