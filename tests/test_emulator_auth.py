"""The emulator's AUTH, byte by byte over a raw socket: XOAUTH2, OAUTHBEARER,
NTLM, Exchange Online's refusals and its own token issuer.  Other tests
trust these replies, so they are pinned here without the library's client."""
from __future__ import annotations

import base64
import json
import re
import socket
import ssl

import pytest

from mailexpress.testing import ConnectorEmulator, User
from mailexpress.testing.tokens import EXCHANGE_SCOPE, TestIssuer, TokenRejected

MAILBOX = "svc-mailer@corp.example"


class Raw:
    """A line-level SMTP client: what goes on the wire is what the test wrote."""

    def __init__(self, em: ConnectorEmulator) -> None:
        self.em = em
        self.sock: socket.socket = socket.create_connection((em.host, em.port), timeout=10)
        self.buf = b""
        self.banner = self.reply()

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def reply(self) -> list[bytes]:
        lines = [self.line()]
        while lines[-1][3:4] == b"-":
            lines.append(self.line())
        return lines

    def cmd(self, text: bytes | str) -> list[bytes]:
        self.sock.sendall((text.encode() if isinstance(text, str) else text) + b"\r\n")
        return self.reply()

    def one(self, text: bytes | str) -> bytes:
        [line] = self.cmd(text)
        return line

    def tls(self) -> list[bytes]:
        assert self.one("STARTTLS").startswith(b"220 ")
        ctx = ssl.create_default_context(cafile=self.em.ca_file)
        ctx.check_hostname = False
        self.sock = ctx.wrap_socket(self.sock)
        return self.cmd("EHLO client.corp.example")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def started():
    ems: list[ConnectorEmulator] = []
    clients: list[Raw] = []

    def make(preset: str | None = "exchange_online", **kw) -> tuple[ConnectorEmulator, Raw]:
        em = (ConnectorEmulator.preset(preset, **kw) if preset else ConnectorEmulator(**kw)).start()
        ems.append(em)
        c = Raw(em)
        clients.append(c)
        return em, c

    yield make
    for c in clients:
        c.close()
    for em in ems:
        em.stop()


def xoauth2(user: str, token: str) -> str:
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


def oauthbearer(user: str, token: str) -> str:
    return base64.b64encode(f"n,a={user},\x01host=127.0.0.1\x01port=587\x01auth=Bearer {token}\x01\x01"
                            .encode()).decode()


def auth_line(caps: list[bytes]) -> bytes | None:
    return next((c[4:] for c in caps if c[4:].startswith(b"AUTH ")), None)


TAG = rb"\[BN0PR01CA0001\.outlook\.office365\.com\]"
TAG_ID = rb"\[BN0PR01CA0001\.outlook\.office365\.com \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z [0-9A-F]{16}\]"


def test_online_offers_login_and_xoauth2_only_after_tls(started):
    em, c = started()
    before = c.cmd("EHLO client.corp.example")
    assert auth_line(before) is None and b"250-STARTTLS" in before
    assert auth_line(c.tls()) == b"AUTH LOGIN XOAUTH2"
    assert c.banner[0].startswith(b"220 BN0PR01CA0001.outlook.office365.com Microsoft ESMTP MAIL Service")


def test_online_login_is_refused_as_basic_auth_disabled(started):
    em, c = started()
    c.cmd("EHLO x")
    c.tls()
    password = next(iter(em.users.values())).password
    assert c.one("AUTH LOGIN") == b"334 VXNlcm5hbWU6"
    assert c.one(base64.b64encode(MAILBOX.encode())) == b"334 UGFzc3dvcmQ6"
    reply = c.one(base64.b64encode(password.encode()))
    assert re.fullmatch(rb"535 5\.7\.139 Authentication unsuccessful, basic authentication is disabled\. "
                        + TAG, reply), reply
    assert [(a.mechanism, a.outcome, a.reason) for a in em.auth_log] == [("LOGIN", "refused",
                                                                          "basic_auth_disabled")]


def test_basic_auth_can_be_turned_back_on_and_wrong_password_has_online_wording(started):
    em, c = started(basic_auth="enabled")
    c.cmd("EHLO x")
    c.tls()
    user = next(iter(em.users.values()))
    bad = base64.b64encode(b"\0" + MAILBOX.encode() + b"\0wrong").decode()
    em2, c2 = started(basic_auth="enabled", auth_mechanisms=("PLAIN", "LOGIN", "XOAUTH2"))
    c2.cmd("EHLO x")
    assert auth_line(c2.tls()) == b"AUTH PLAIN LOGIN XOAUTH2"
    assert re.fullmatch(rb"535 5\.7\.139 Authentication unsuccessful, the user credentials were incorrect\. "
                        + TAG, c2.one(f"AUTH PLAIN {bad}"))
    assert c.one("AUTH LOGIN " + base64.b64encode(user.username.encode()).decode()) == b"334 UGFzc3dvcmQ6"
    assert c.one(base64.b64encode(user.password.encode())) == b"235 2.7.0 Authentication successful"


def test_basic_auth_retired_is_550_5_7_30(started):
    em, c = started(basic_auth="retired")
    c.cmd("EHLO x")
    c.tls()
    c.one("AUTH LOGIN")
    c.one(base64.b64encode(b"svc-mailer"))
    assert c.one(base64.b64encode(b"pw")) == b"550 5.7.30 Basic authentication is not supported for Client Submission."


def test_xoauth2_with_initial_response_then_mail(started):
    em, c = started()
    c.cmd("EHLO x")
    c.tls()
    token = em.issue_token(MAILBOX)
    assert c.one(f"AUTH XOAUTH2 {xoauth2(MAILBOX, token)}") == b"235 2.7.0 Authentication successful"
    assert c.one(f"MAIL FROM:<{MAILBOX}>") == b"250 2.1.0 Sender OK"
    assert em.auth_log[-1].user == MAILBOX and em.auth_log[-1].outcome == "ok"


def test_xoauth2_after_an_empty_334_and_a_token_of_tens_of_kb(started):
    em, c = started()
    c.cmd("EHLO x")
    c.tls()
    token = em.issue_token(MAILBOX, extra_claims={"groups": ["g%05d" % i for i in range(5000)]})
    assert 40_000 < len(token) < 64 * 1024
    assert c.one("AUTH XOAUTH2") == b"334 "
    assert c.one(xoauth2(MAILBOX, token)) == b"235 2.7.0 Authentication successful"


@pytest.mark.parametrize("how, reason", [
    ({"expires_in": -60}, "expired"),
    ({"audience": "https://graph.microsoft.com"}, "wrong_audience"),
    ({"key": b"k" * 32}, "bad_signature"),
    ({"issuer": "https://sts.windows.net/another-tenant/"}, "wrong_issuer"),
])
def test_bad_tokens_draw_the_json_challenge_then_535(started, how, reason):
    em, c = started()
    c.cmd("EHLO x")
    c.tls()
    token = em.issue_token(MAILBOX, **how)
    challenge = c.one(f"AUTH XOAUTH2 {xoauth2(MAILBOX, token)}")
    assert challenge.startswith(b"334 ")
    assert json.loads(base64.b64decode(challenge[4:])) == {
        "status": "401", "schemes": "bearer", "scope": "https://outlook.office365.com/.default"}
    assert re.fullmatch(rb"535 5\.7\.3 Authentication unsuccessful " + TAG_ID, c.one(b""))
    assert em.auth_log[-1].reason == reason
    assert c.one(f"MAIL FROM:<{MAILBOX}>").startswith(b"530 5.7.57")


def test_a_wrong_dummy_response_is_a_protocol_error(started):
    em, c = started()
    c.cmd("EHLO x")
    c.tls()
    token = em.issue_token(MAILBOX, expires_in=-1)
    assert c.one(f"AUTH XOAUTH2 {xoauth2(MAILBOX, token)}").startswith(b"334 ")
    assert c.one("AQ==").startswith(b"501 5.5.2")


def test_oauthbearer_rfc7628_success_and_error_challenge(started):
    em, c = started(auth_mechanisms=("XOAUTH2", "OAUTHBEARER"))
    c.cmd("EHLO x")
    assert auth_line(c.tls()) == b"AUTH XOAUTH2 OAUTHBEARER"
    expired = em.issue_token(MAILBOX, expires_in=-1)
    challenge = c.one(f"AUTH OAUTHBEARER {oauthbearer(MAILBOX, expired)}")
    doc = json.loads(base64.b64decode(challenge[4:]))
    assert doc["status"] == "invalid_token" and doc["scope"] == EXCHANGE_SCOPE
    assert doc["openid-configuration"] == (f"https://login.microsoftonline.com/{em.issuer.tenant_id}"
                                           "/v2.0/.well-known/openid-configuration")
    assert c.one("AQ==").startswith(b"535 5.7.3 ")
    assert c.one("AUTH OAUTHBEARER") == b"334 "
    assert c.one(oauthbearer(MAILBOX, em.issue_token(MAILBOX))) == b"235 2.7.0 Authentication successful"


def test_oauthbearer_refuses_channel_binding_and_missing_authzid(started):
    em, c = started(auth_mechanisms=("OAUTHBEARER",))
    c.cmd("EHLO x")
    c.tls()
    token = em.issue_token(MAILBOX)
    for gs2 in ("p=tls-unique,a=x,", "n,,"):
        blob = base64.b64encode(f"{gs2}\x01auth=Bearer {token}\x01\x01".encode()).decode()
        assert c.one(f"AUTH OAUTHBEARER {blob}") == b"501 5.5.2 Cannot decode argument"


def test_mailbox_must_be_granted_to_the_app(started):
    alice = User("alice", "pw", "alice@corp.example")
    em, c = started(users=[User("svc-mailer", "pw", MAILBOX), alice])
    c.cmd("EHLO x")
    c.tls()
    token = em.issue_token(MAILBOX)               # FullAccess on svc-mailer only
    refused = c.one(f"AUTH XOAUTH2 {xoauth2(alice.address, token)}")
    assert refused.startswith(b"535 5.7.3 Authentication unsuccessful")     # no 334: the token is fine
    assert em.auth_log[-1].reason == "no_mailbox_permission"
    em.grant_mailbox(alice.address)                # Add-MailboxPermission alice ... FullAccess
    assert c.one(f"AUTH XOAUTH2 {xoauth2(alice.address, token)}") == b"235 2.7.0 Authentication successful"
    assert c.one("MAIL FROM:<alice@corp.example>").startswith(b"250 ")


def test_delegated_token_is_for_its_own_user_only(started):
    alice = User("alice", "pw", "alice@corp.example")
    em, c = started(users=[User("svc-mailer", "pw", MAILBOX), alice])
    c.cmd("EHLO x")
    c.tls()
    token = em.issue_token(alice.address, scope="SMTP.Send offline_access")
    assert c.one(f"AUTH XOAUTH2 {xoauth2(MAILBOX, token)}").startswith(b"535 5.7.3")
    assert em.auth_log[-1].reason == "other_mailbox"
    assert c.one(f"AUTH XOAUTH2 {xoauth2(alice.address, token)}") == b"235 2.7.0 Authentication successful"


def test_app_without_sendasapp_gets_535_5_7_3_without_challenge(started):
    em, c = started("exchange_online_no_sendasapp")
    c.cmd("EHLO x")
    c.tls()
    token = em.issue_token(MAILBOX)
    assert c.one(f"AUTH XOAUTH2 {xoauth2(MAILBOX, token)}").startswith(b"535 5.7.3 Authentication unsuccessful [")
    assert em.auth_log[-1].reason == "no_role"
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["roles"] == [] and claims["aud"] == "https://outlook.office365.com"


def test_smtp_auth_disabled_for_the_mailbox_refuses_even_a_good_token(started):
    em, c = started("exchange_online_smtp_auth_disabled")
    c.cmd("EHLO x")
    c.tls()
    reply = c.one(f"AUTH XOAUTH2 {xoauth2(MAILBOX, em.issue_token(MAILBOX))}")
    assert re.fullmatch(rb"535 5\.7\.139 Authentication unsuccessful, SmtpClientAuthentication is disabled "
                        rb"for the Mailbox\. Visit https://aka\.ms/smtp_auth_disabled for more information\. "
                        + TAG, reply), reply


def test_tenant_switch_wording(started):
    em, c = started(smtp_client_auth_disabled="tenant")
    c.cmd("EHLO x")
    c.tls()
    assert b"disabled for the Tenant." in c.one(f"AUTH XOAUTH2 {xoauth2(MAILBOX, em.issue_token(MAILBOX))}")


def test_temporary_server_error_then_success(started):
    em, c = started(auth_temporary_failures=1)
    c.cmd("EHLO x")
    c.tls()
    token = em.issue_token(MAILBOX)
    assert c.one(f"AUTH XOAUTH2 {xoauth2(MAILBOX, token)}") == \
        b"451 4.7.0 Temporary server error. Please try again later. PRX4"
    assert c.one(f"AUTH XOAUTH2 {xoauth2(MAILBOX, token)}") == b"235 2.7.0 Authentication successful"
    assert [a.outcome for a in em.auth_log] == ["temporary", "ok"]


def test_ehlo_after_auth_resets_authentication(started):
    em, c = started()
    c.cmd("EHLO x")
    c.tls()
    assert c.one(f"AUTH XOAUTH2 {xoauth2(MAILBOX, em.issue_token(MAILBOX))}").startswith(b"235")
    c.cmd("EHLO again")
    assert c.one(f"MAIL FROM:<{MAILBOX}>") == b"530 5.7.57 Client not authenticated to send mail"


def test_xoauth2_is_not_offered_or_accepted_before_tls(started):
    em, c = started()
    c.cmd("EHLO x")
    assert c.one(f"AUTH XOAUTH2 {xoauth2(MAILBOX, em.issue_token(MAILBOX))}") == \
        b"504 5.7.4 Unrecognized authentication type"


# -- on premises, Basic off: Integrated Windows authentication only ---------------

def test_onprem_basic_off_offers_gssapi_ntlm_before_and_after_tls(started):
    em, c = started("basic_auth_off")
    assert auth_line(c.cmd("EHLO x")) == b"AUTH GSSAPI NTLM"
    assert auth_line(c.tls()) == b"AUTH GSSAPI NTLM"
    assert c.one("AUTH LOGIN") == b"504 5.7.4 Unrecognized authentication type"
    assert c.one("AUTH GSSAPI") == b"504 5.7.4 Unrecognized authentication type"


@pytest.mark.parametrize("username", ["svc-mailer", "CORP\\svc-mailer", "svc-mailer@corp.example"])
@pytest.mark.parametrize("initial", [True, False])
def test_ntlm_through_pyspnego(started, username, initial):
    import spnego
    em, c = started("basic_auth_off")
    c.cmd("EHLO x")
    c.tls()
    user = next(iter(em.users.values()))
    ctx = spnego.client(username, user.password, protocol="ntlm")
    negotiate = base64.b64encode(ctx.step()).decode()
    if initial:
        challenge = c.one(f"AUTH NTLM {negotiate}")
    else:
        assert c.one("AUTH NTLM") == b"334 NTLM supported"       # MS-SMTPNTLM 2.2.1.2
        challenge = c.one(negotiate)
    assert challenge.startswith(b"334 TlRMTVNTUAAC")              # NTLMSSP CHALLENGE_MESSAGE
    authenticate = ctx.step(base64.b64decode(challenge[4:]))
    assert c.one(base64.b64encode(authenticate)) == b"235 2.7.0 Authentication successful"
    assert c.one("MAIL FROM:<anyone@partner.example>").startswith(b"250 ")
    assert em.auth_log[-1].user.rpartition("\\")[2] == username.rpartition("\\")[2]


def test_ntlm_wrong_password(started):
    import spnego
    em, c = started("basic_auth_off")
    c.cmd("EHLO x")
    ctx = spnego.client("CORP\\svc-mailer", "not-the-password", protocol="ntlm")
    challenge = c.one(f"AUTH NTLM {base64.b64encode(ctx.step()).decode()}")
    reply = c.one(base64.b64encode(ctx.step(base64.b64decode(challenge[4:]))))
    assert reply == b"535 5.7.3 Authentication unsuccessful"
    assert em.auth_log[-1].reason == "bad_password"


# -- the issuer and the provider ---------------------------------------------------

def test_issuer_rejects_alg_none_and_garbage():
    issuer = TestIssuer()
    good = issuer.issue("a@corp.example")
    header, payload, _sig = good.split(".")
    none_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    for token, reason in ((f"{none_header}.{payload}.", "unsupported_alg"), ("a.b", "malformed"),
                          ("!!.??.xx", "malformed")):
        with pytest.raises(TokenRejected) as info:
            issuer.validate(token)
        assert info.value.reason == reason
    assert issuer.validate(good)["tid"] == issuer.tenant_id
    assert "key" not in repr(issuer).replace("key='<redacted>'", "")


def test_provider_token_follows_the_scope(started):
    em, c = started()
    c.cmd("EHLO x")
    c.tls()
    provider = em.token_provider()
    graph = provider.get_token("https://graph.microsoft.com/.default")
    good = provider.get_token(EXCHANGE_SCOPE)
    assert provider.requests == 2 and "redacted" in repr(good) and good.token not in repr(good)
    assert c.one(f"AUTH XOAUTH2 {xoauth2(MAILBOX, graph.token)}").startswith(b"334 ")
    assert c.one(b"").startswith(b"535 5.7.3")
    token, expires = provider()
    assert expires > 0 and c.one(f"AUTH XOAUTH2 {xoauth2(MAILBOX, token)}").startswith(b"235 ")


def test_exchange_full_list_with_integrated_auth(started):
    em, c = started("exchange_client", integrated_auth=True)
    assert auth_line(c.cmd("EHLO x")) == b"AUTH GSSAPI NTLM"
    assert auth_line(c.tls()) == b"AUTH GSSAPI NTLM LOGIN"        # Exchange's order after STARTTLS
    assert c.one("AUTH NTLM") == b"334 NTLM supported"            # answered, not 504


def test_ntlm_is_not_advertised_unless_integrated_auth(started):
    em, c = started("exchange_client")
    c.cmd("EHLO x")
    assert auth_line(c.tls()) == b"AUTH GSSAPI LOGIN"     # only what it answers (GSSAPI: 504, no KDC)
    assert c.one("AUTH NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAKAGFKAAAADw==") == \
        b"504 5.7.4 Unrecognized authentication type"
    assert em.auth_log == []
