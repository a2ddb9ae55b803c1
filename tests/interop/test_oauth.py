"""XOAUTH2 and OAUTHBEARER against a real Postfix + Dovecot (oauth2 passdb,
local JWT validation), with tokens from real MSAL and the suite's own HTTPS
identity provider (see oauth_harness.py).

The first tests prove the peer with an independent client (smtplib and MSAL
directly, no mailexpress code); the rest drive mailexpress through its config
(``oauth_*`` keys) and ``token_provider=``.
"""
from __future__ import annotations

import base64
import json
import re
import smtplib
import ssl
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import missing_requirements, serving
from oauth_harness import (APPS, BAD_KINDS, BASIC_ACCOUNT, EXCHANGE_SCOPE, TENANT, App,
                           OAuthHarness, bad_tokens, msal_app, raw_auth, sasl_blob)
from scenarios import collect_oauth, markdown

import mailexpress as mx

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "docs"))
from gen_interop_table import oauth_table_in_doc  # noqa: E402

MAILER = APPS["mailer"]
SECRET_ENV = "MX_INTEROP_OAUTH_SECRET"
TIMEOUTS = {"connect": 5, "banner": 10, "ehlo": 10, "tls": 10, "auth": 20, "mail": 10, "rcpt": 10,
            "data": 10, "end_of_data": 60, "command": 10, "quit": 5}


@pytest.fixture(scope="module")
def oauth() -> Iterator[OAuthHarness]:
    # start() raises (the tests fail) if a server cannot start
    yield from serving(missing_requirements(), OAuthHarness)


@pytest.fixture
def secret(oauth: OAuthHarness, monkeypatch: pytest.MonkeyPatch) -> str:
    """The app's client secret in the environment, and the test CA for MSAL's
    HTTPS (requests reads REQUESTS_CA_BUNDLE) as a user would set them."""
    monkeypatch.setenv(SECRET_ENV, MAILER.secret)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", oauth.endpoint.ca_file)
    return MAILER.secret


def oauth_cfg(h: OAuthHarness, service: str = "submission", app: App = MAILER, **kw: Any) -> mx.Config:
    """A config taking its token from the local endpoint through MSAL."""
    values: dict[str, Any] = {
        "host": "127.0.0.1", "port": h.ports[service], "username": app.mailbox, "from_address": app.mailbox,
        "ca_file": h.ca_file, "security": "starttls", "timeouts": TIMEOUTS,
        "oauth_tenant": TENANT, "oauth_client_id": app.client_id, "oauth_client_secret_env": SECRET_ENV,
        "oauth_authority": h.endpoint.authority, "oauth_scope": EXCHANGE_SCOPE,
    }
    values.update(kw)
    return mx.Config(**values)


class FixedToken:
    """A credential in azure-identity's shape (get_token(*scopes) ->
    AccessToken) handing out one given token, valid for an hour as far as the
    caller can tell: what the server makes of it is the test."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.calls = 0

    def get_token(self, *scopes: str, **kw: Any) -> Any:
        from azure.core.credentials import AccessToken
        self.calls += 1
        return AccessToken(self.token, int(time.time()) + 3600)


def provider_cfg(h: OAuthHarness, token: str, service: str = "submission", app: App = MAILER,
                 **kw: Any) -> tuple[mx.Config, FixedToken]:
    """A config with token_provider= instead of oauth_* keys, and the provider."""
    provider = FixedToken(token)
    values: dict[str, Any] = {
        "host": "127.0.0.1", "port": h.ports[service], "username": app.mailbox, "from_address": app.mailbox,
        "ca_file": h.ca_file, "security": "starttls", "timeouts": TIMEOUTS, "auth_mechanisms": ["XOAUTH2"],
        "token_provider": provider,
    }
    values.update(kw)
    return mx.Config(**values), provider


def message(marker: str, sender: str = MAILER.mailbox) -> bytes:
    return (f"From: {sender}\r\nTo: bob@partner.example\r\nSubject: {marker}\r\n\r\n"
            f".leading dot\r\n..two dots\r\n{marker} body\r\nno final newline").encode()


def delivered_copy(h: OAuthHarness, marker: str, sent: bytes) -> bytes:
    got = h.wait_for(marker.encode()).data
    assert got.endswith(sent.replace(b"\r\n", b"\n")), "the delivered message differs from what was sent"
    return got


def not_delivered(h: OAuthHarness, marker: str) -> None:
    """marker never arrived: a message sent after it (good token, independent
    client) is delivered, and marker is still not in the Maildir."""
    sentinel = f"sentinel-{uuid.uuid4().hex[:8]}"
    r = raw_auth(h, "submission", "XOAUTH2", MAILER.mailbox, h.issuer.token(MAILER), message=message(sentinel))
    assert r.final[0] == 235, r.shown()
    h.wait_for(sentinel.encode())
    assert not [m for m in h.delivered() if marker.encode() in m.data], f"{marker} was delivered"


def refusal_json(h: OAuthHarness, mechanism: str) -> dict[str, str]:
    """The JSON Dovecot 2.3.19 sends in its 334 for a refused token: Google's
    XOAUTH2 shape, or RFC 7628's for OAUTHBEARER (status invalid_token)."""
    url = f"{h.endpoint.base_url}/{TENANT}/v2.0/.well-known/openid-configuration"
    if mechanism == "XOAUTH2":
        return {"status": "401", "schemes": "bearer", "scope": "mail", "openid-configuration": url}
    return {"status": "invalid_token", "openid-configuration": url}


# -- the peer itself, with an independent client -------------------------------------------------


def test_server_offers_oauth_only_after_tls(oauth):
    s = smtplib.SMTP("127.0.0.1", oauth.ports["submission"], timeout=30)
    try:
        s.ehlo("client.corp.example")
        assert not s.has_extn("auth")
        s.starttls(context=ssl.create_default_context(cafile=oauth.ca_file))
        s.ehlo("client.corp.example")
        assert s.esmtp_features["auth"].split() == ["LOGIN", "XOAUTH2", "OAUTHBEARER"]
    finally:
        s.close()


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_real_msal_token_is_accepted_by_dovecot(oauth, mechanism):
    """Real MSAL gets the token from the local endpoint (discovery + token
    request); a second acquire comes from MSAL's cache; smtplib sends it by hand."""
    before = oauth.endpoint.tokens_by_client[MAILER.client_id]
    app = msal_app(oauth.endpoint, MAILER)
    first = app.acquire_token_for_client(scopes=[EXCHANGE_SCOPE])
    second = app.acquire_token_for_client(scopes=[EXCHANGE_SCOPE])
    assert "access_token" in first, first.get("error_description")
    assert first["token_source"] == "identity_provider" and second["token_source"] == "cache"
    assert second["access_token"] == first["access_token"]
    assert oauth.endpoint.tokens_by_client[MAILER.client_id] == before + 1
    marker = f"raw-{mechanism}-{uuid.uuid4().hex[:8]}"
    r = raw_auth(oauth, "submission", mechanism, MAILER.mailbox, first["access_token"], message=message(marker))
    assert r.replies == [(235, "2.7.0 Authentication successful")]
    delivered_copy(oauth, marker, message(marker) + b"\r\n")


def test_msal_sees_the_endpoint_errors_like_entra(oauth):
    """The endpoint answers like Entra, so MSAL hands back Entra's codes."""
    wrong = msal_app(oauth.endpoint, MAILER, secret="not-the-secret").acquire_token_for_client(scopes=[EXCHANGE_SCOPE])
    assert wrong["error"] == "invalid_client" and wrong["error_codes"] == [7000215]
    unknown = App("00000000-0000-0000-0000-00000000dead", "x", "nobody@corp.example")
    got = msal_app(oauth.endpoint, unknown).acquire_token_for_client(scopes=[EXCHANGE_SCOPE])
    assert got["error"] == "unauthorized_client" and got["error_codes"] == [700016]


@pytest.mark.parametrize("kind", BAD_KINDS)
@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_dovecot_refuses_each_bad_token_for_its_reason(oauth, kind, mechanism):
    token, user, reason = bad_tokens(oauth)[kind]
    r = raw_auth(oauth, "submission", mechanism, user, token)
    assert r.replies[0][0] == 334 and r.final == (535, "5.7.8 Error: authentication failed: (reason unavailable)")
    assert r.challenge == refusal_json(oauth, mechanism)
    want = f"oauth2 failed: Local validation failed: {reason}"
    assert want in oauth.wait_log(want)


def test_token_size_limits_of_postfix_and_dovecot(oauth):
    """Postfix refuses a SASL response over smtpd_sasl_response_limit (12288);
    with it raised, Dovecot's auth protocol (16 KiB lines) is the limit:
    a 10,000-character token passes after a 334, a 13,000-character one does not."""
    t10 = oauth.issuer.token_of_size(MAILER, 10_000)
    assert raw_auth(oauth, "submission", "XOAUTH2", MAILER.mailbox, t10, initial=False).final == (
        500, "5.5.6 SASL response limit exceeded")
    assert raw_auth(oauth, "submission_big", "XOAUTH2", MAILER.mailbox, t10, initial=False).replies == [
        (334, ""), (235, "2.7.0 Authentication successful")]
    t13 = oauth.issuer.token_of_size(MAILER, 13_000)
    assert raw_auth(oauth, "submission_big", "XOAUTH2", MAILER.mailbox, t13, initial=False).final == (
        454, "4.7.0 Temporary authentication failure: Connection lost to authentication server")
    assert "sent us more than 16384 bytes" in oauth.wait_log("sent us more than 16384 bytes")


def test_postfix_cuts_a_long_auth_line(oauth):
    """Postfix's line_length_limit (2048): an AUTH line up to it works, a
    longer one is cut (the rest dropped) and Dovecot sees broken base64; the
    same token after the 334 passes (smtpd_sasl_response_limit, 12288)."""
    def line(token: str) -> int:
        return len(f"AUTH XOAUTH2 {sasl_blob('XOAUTH2', MAILER.mailbox, token, 0)}")
    fits = oauth.issuer.token_of_size(MAILER, 1_450)
    cut = oauth.issuer.token_of_size(MAILER, 1_550)
    assert line(fits) <= 2048 < line(cut)
    assert raw_auth(oauth, "submission", "XOAUTH2", MAILER.mailbox, fits).final[0] == 235
    assert raw_auth(oauth, "submission", "XOAUTH2", MAILER.mailbox, cut).replies == [
        (535, "5.7.8 Error: authentication failed: Invalid base64 data in initial response")]
    assert raw_auth(oauth, "submission", "XOAUTH2", MAILER.mailbox, cut, initial=False).final[0] == 235


def test_oauth_reply_table_in_docs_matches_the_servers(oauth):
    ours = markdown(collect_oauth(oauth)).splitlines()[2:]
    documented = oauth_table_in_doc().splitlines()[2:]
    assert ours == documented, "Dovecot answers differently now: run python docs/gen_interop_table.py"


# -- the C core (Session.auth_oauth) against the peer ---------------------------------------------


def open_session(h: OAuthHarness, service: str = "submission") -> mx.Session:
    s = mx.Session(host="127.0.0.1", port=h.ports[service], ca_file=h.ca_file, timeouts=TIMEOUTS)
    s.connect()
    s.ehlo()
    s.starttls()
    return s


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_session_auth_oauth_with_an_msal_token_delivers_byte_exact(oauth, mechanism):
    token = msal_app(oauth.endpoint, MAILER).acquire_token_for_client(scopes=[EXCHANGE_SCOPE])["access_token"]
    marker = f"core-{mechanism}-{uuid.uuid4().hex[:8]}"
    raw = message(marker)
    s = open_session(oauth)
    try:
        reply = s.auth_oauth(MAILER.mailbox, token, mechanism)
        assert (reply.code, reply.enhanced) == (235, "2.7.0") and s.authenticated
        s.send(raw, envelope_from=MAILER.mailbox, recipients=["bob@partner.example"])
        client = [t for _ms, d, t in s.transcript if d == "C"]
    finally:
        s.close()
    assert f"AUTH {mechanism} <token redacted>" in client       # one round trip: the initial response
    assert token not in repr(s.transcript) and token[:40] not in repr(s.transcript)
    delivered_copy(oauth, marker, raw + b"\r\n")


@pytest.mark.parametrize("kind", BAD_KINDS)
@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_session_auth_oauth_refused_token_carries_the_servers_json(oauth, kind, mechanism):
    token, user, _reason = bad_tokens(oauth)[kind]
    marker = f"core-refused-{uuid.uuid4().hex[:8]}"
    s = open_session(oauth)
    try:
        with pytest.raises(mx.AuthError) as info:
            s.auth_oauth(user, token, mechanism)
        assert not s.authenticated
        with pytest.raises(mx.Error):       # and nothing goes out on this session
            s.send(message(marker, user), envelope_from=user, recipients=["bob@partner.example"])
        transcript = repr(s.transcript)
    finally:
        s.close()
    err = info.value
    assert (err.code, err.enhanced, err.stage) == (535, "5.7.8", mx.Stage.AUTH)
    assert json.loads(err.oauth_challenge) == refusal_json(oauth, mechanism)
    for shown in (str(err), repr(err), transcript):
        assert token not in shown and token.split(".")[2][:24] not in shown
    not_delivered(oauth, marker)


def test_session_an_entra_sized_token_gets_past_postfixs_line_limit(oauth):
    """Entra's access tokens for Exchange run to 1,500-3,000 characters.
    Postfix reads a command line up to line_length_limit (2048) and drops the
    rest, so an AUTH line longer than that ends in 535 5.7.8 'Invalid base64
    data in initial response' (test_postfix_cuts_a_long_auth_line): a refusal
    that says nothing about the token.  Such a token has to go after the 334."""
    token = oauth.issuer.token_of_size(MAILER, 2_500)
    marker = f"entra-size-{uuid.uuid4().hex[:8]}"
    s = open_session(oauth)                 # Postfix's defaults
    try:
        reply = s.auth_oauth(MAILER.mailbox, token)
        assert reply.code == 235, s.transcript
        s.send(message(marker), envelope_from=MAILER.mailbox, recipients=["bob@partner.example"])
    finally:
        s.close()
    delivered_copy(oauth, marker, message(marker) + b"\r\n")


def test_session_sends_no_token_without_tls(oauth):
    """The insecure service offers XOAUTH2 without TLS: the token stays home."""
    s = mx.Session(host="127.0.0.1", port=oauth.ports["insecure"], security="none", timeouts=TIMEOUTS)
    try:
        s.connect()
        s.ehlo()
        assert "XOAUTH2" in s.capabilities["AUTH"].split() and not s.tls_active
        with pytest.raises(mx.InsecureAuthError):
            s.auth_oauth(MAILER.mailbox, oauth.issuer.token(MAILER))
        assert not [t for _ms, d, t in s.transcript if d == "C" and t.startswith("AUTH")]
    finally:
        s.close()


def test_session_sends_a_large_token_after_the_334(oauth):
    """A 10,000-character token makes the AUTH line longer than 12,288 octets:
    AUTH XOAUTH2 alone, the response after the server's 334 (Postfix with its
    SASL response limit raised; Dovecot takes it)."""
    token = oauth.issuer.token_of_size(MAILER, 10_000)
    marker = f"big-token-{uuid.uuid4().hex[:8]}"
    s = open_session(oauth, "submission_big")
    try:
        assert s.auth_oauth(MAILER.mailbox, token).code == 235
        s.send(message(marker), envelope_from=MAILER.mailbox, recipients=["bob@partner.example"])
        lines = [(d, t) for _ms, d, t in s.transcript]
    finally:
        s.close()
    i = lines.index(("C", "AUTH XOAUTH2"))
    assert lines[i + 1][0] == "S" and lines[i + 1][1].startswith("334")
    assert token not in repr(lines)
    delivered_copy(oauth, marker, message(marker) + b"\r\n")


def test_session_tokens_over_the_servers_limits(oauth):
    """Over Dovecot's limit (~12 KB): 454 4.7.0, a temporary failure, not a
    verdict on the token.  Over Postfix's default smtpd_sasl_response_limit
    (12,288 octets of base64): 500 5.5.6."""
    s = open_session(oauth, "submission_big")
    try:
        with pytest.raises(mx.AuthError) as info:
            s.auth_oauth(MAILER.mailbox, oauth.issuer.token_of_size(MAILER, 13_000))
    finally:
        s.close()
    assert info.value.code == 454 and info.value.transient
    assert "refused the credentials" not in str(info.value)
    s = open_session(oauth, "submission")
    try:
        with pytest.raises(mx.Error) as info2:
            s.auth_oauth(MAILER.mailbox, oauth.issuer.token_of_size(MAILER, 10_000))
    finally:
        s.close()
    assert info2.value.code == 500 and info2.value.enhanced == "5.5.6"


# -- mailexpress through its config against the peer -------------------------------------------


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_send_with_an_msal_token_from_the_config_is_delivered_byte_exact(oauth, secret, mechanism):
    """oauth_tenant, oauth_client_id, oauth_client_secret_env, oauth_authority
    (the local endpoint), oauth_scope: MSAL gets the token, the core sends it."""
    marker = f"mx-{mechanism}-{uuid.uuid4().hex[:8]}"
    raw = message(marker)
    config = oauth_cfg(oauth, auth_mechanisms=[mechanism])
    with mx.connect(config) as s:
        assert s.authenticated
        auth_lines = [t for _ms, d, t in s.transcript if d == "C" and t.startswith("AUTH")]
        s.send(raw, envelope_from=MAILER.mailbox, recipients=["bob@partner.example"])
    assert auth_lines == [f"AUTH {mechanism} <token redacted>"]
    delivered_copy(oauth, marker, raw + b"\r\n")
    assert oauth.endpoint.tokens_by_client[MAILER.client_id] >= 1


def test_send_as_with_the_config_token(oauth, secret):
    marker = f"mx-send-as-{uuid.uuid4().hex[:8]}"
    result = mx.send_as(oauth_cfg(oauth), to="bob@partner.example", subject=marker, body="sent with a token\n")
    assert result.ok
    got = oauth.wait_for(marker.encode()).data
    assert f"From: {MAILER.mailbox}".encode() in got and b"sent with a token" in got


def test_the_default_order_picks_the_token_over_login(oauth, secret):
    """The server offers LOGIN XOAUTH2 OAUTHBEARER (like Exchange Online, plus
    OAUTHBEARER); with a token source configured the token goes first even
    though a password is configured too."""
    with mx.connect(oauth_cfg(oauth, password="unused-password")) as s:
        assert s.authenticated
        assert [t for _ms, d, t in s.transcript if d == "C" and t.startswith("AUTH")] == [
            "AUTH XOAUTH2 <token redacted>"]


@pytest.mark.parametrize("kind", BAD_KINDS)
@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_a_refused_token_is_an_auth_error_with_the_servers_json_and_no_mail(oauth, kind, mechanism):
    token, user, _reason = bad_tokens(oauth)[kind]
    config, provider = provider_cfg(oauth, token, username=user, from_address=user, auth_mechanisms=[mechanism])
    marker = f"refused-{uuid.uuid4().hex[:8]}"
    with pytest.raises(mx.AuthError) as info:
        mx.send_as(config, message=message(marker, user), to="bob@partner.example")
    err = info.value
    assert (err.code, err.enhanced, err.stage) == (535, "5.7.8", mx.Stage.AUTH)
    assert err.mechanism == mechanism
    assert err.oauth_error == refusal_json(oauth, mechanism)
    assert json.loads(err.oauth_challenge) == err.oauth_error
    for shown in (str(err), repr(err)):
        assert token not in shown and token.split(".")[2][:24] not in shown
    assert provider.calls >= 1
    not_delivered(oauth, marker)


def test_a_token_for_the_wrong_resource_through_msal(oauth, secret):
    """oauth_scope naming Microsoft Graph instead of Exchange: MSAL gets a token
    whose aud is Graph, and the server refuses it (aud is checked)."""
    config = oauth_cfg(oauth, oauth_scope="https://graph.microsoft.com/.default", auth_mechanisms=["XOAUTH2"])
    with pytest.raises(mx.AuthError) as info:
        mx.connect(config)
    assert info.value.code == 535 and info.value.oauth_error == refusal_json(oauth, "XOAUTH2")
    want = "oauth2 failed: Local validation failed: client_id not found in aud field"
    assert want in oauth.wait_log(want)


def test_no_fallback_to_login_after_the_token_was_refused(oauth):
    """svc-basic has a working password, but once the server refused the token
    (5xx) nothing else is tried."""
    token, user, _ = bad_tokens(oauth)["another mailbox"]
    config, _provider = provider_cfg(oauth, token, username=user, from_address=user, password=BASIC_ACCOUNT[1],
                                     auth_mechanisms=["automatic"])
    with pytest.raises(mx.AuthError) as info:      # a LOGIN after it would have succeeded
        mx.connect(config)
    assert info.value.mechanism == "XOAUTH2" and info.value.code == 535
    with mx.connect(config, token_provider=None, auth_mechanisms=["LOGIN"]) as s:    # the password itself works
        assert s.authenticated
        assert [t for _ms, d, t in s.transcript if d == "C" and t.startswith("AUTH")] == ["AUTH LOGIN"]


def test_one_token_request_over_several_connections(oauth, secret, monkeypatch):
    """One config, five connections and a send_many of twenty: MSAL's cache
    (one token source per config) asks the endpoint once."""
    app = APPS["bulk"]           # an application no other test uses: MSAL has nothing cached for it
    monkeypatch.setenv(SECRET_ENV, app.secret)
    oauth.endpoint.reset_counts()
    config = oauth_cfg(oauth, app=app, auth_mechanisms=["XOAUTH2"])
    markers = [f"count-{i}-{uuid.uuid4().hex[:6]}" for i in range(5)]
    for m in markers:
        with mx.connect(config) as s:
            s.send(message(m, app.mailbox), envelope_from=app.mailbox, recipients=["bob@partner.example"])
    bulk = [f"bulk-{i}-{uuid.uuid4().hex[:6]}" for i in range(20)]
    result = mx.send_many(config, [{"to": "bob@partner.example", "subject": m, "body": "bulk\n"} for m in bulk])
    assert not result.failed
    for m in markers:
        delivered_copy(oauth, m, message(m, app.mailbox) + b"\r\n")
    for m in bulk:
        oauth.wait_for(m.encode())
    assert dict(oauth.endpoint.tokens_by_client) == {app.client_id: 1}
    assert oauth.endpoint.discovery_requests <= 1


@pytest.mark.parametrize("case,code", [("wrong secret", "AADSTS7000215"), ("unknown application", "AADSTS700016"),
                                       ("unknown tenant", "AADSTS90002")])
def test_token_endpoint_failures_are_auth_errors_with_the_provider_code(oauth, secret, monkeypatch, case, code):
    kw: dict[str, Any] = {}
    if case == "wrong secret":
        monkeypatch.setenv(SECRET_ENV, "not-the-secret")
    elif case == "unknown application":
        kw["oauth_client_id"] = "00000000-0000-0000-0000-00000000dead"
    else:
        kw["oauth_tenant"] = "00000000-0000-0000-0000-0000000beef0"
    oauth.endpoint.reset_counts()
    with pytest.raises(mx.AuthError) as info:
        mx.connect(oauth_cfg(oauth, **kw))
    assert info.value.provider_code == code and info.value.stage is mx.Stage.AUTH
    assert code in oauth.endpoint.refused
    assert MAILER.secret not in str(info.value) and "not-the-secret" not in str(info.value)


def test_connector_passes_with_oauth(oauth, secret):
    report = mx.test_connector(oauth_cfg(oauth))
    checks = {c.id: c.status for c in report.checks}
    assert checks["tls"] == "pass" and checks["auth_requires_tls"] == "pass", str(report)
    assert checks["auth_mechanisms"] == "pass" and checks["auth"] == "pass", str(report)
    assert "XOAUTH2" in report.check("auth").summary + " ".join(report.check("auth").evidence or ())
    assert report.server["family"] == "postfix"


def test_connector_with_a_token_for_the_wrong_resource_says_so(oauth, secret):
    report = mx.test_connector(oauth_cfg(oauth, oauth_scope="https://graph.microsoft.com/.default"))
    auth = report.check("auth")
    assert auth.status == "fail" and not report.ok, str(report)
    advice = (auth.advice or "").lower()
    assert "token" in advice and ("oauth_scope" in advice or "outlook.office365.com" in advice), auth.advice


def test_connector_with_an_app_lacking_smtp_send_as_app_fails_auth(oauth, secret, monkeypatch):
    """The app's token is genuine (right tenant, audience, mailbox) but carries
    IMAP.AccessAsApp instead of SMTP.SendAsApp: auth fails, nothing is probed."""
    app = APPS["noperm"]
    monkeypatch.setenv(SECRET_ENV, app.secret)
    report = mx.test_connector(oauth_cfg(oauth, app=app))
    checks = {c.id: c.status for c in report.checks}
    assert checks["auth_mechanisms"] == "pass" and checks["auth"] == "fail" and not report.ok, str(report)
    assert checks["send_as_self"] == "skip"
    assert "token" in (report.check("auth").advice or "").lower()


def test_connector_with_a_wrong_secret_names_the_provider_code(oauth, secret, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "not-the-secret")
    report = mx.test_connector(oauth_cfg(oauth))
    auth = report.check("auth")
    assert auth.status == "fail" and "AADSTS7000215" in str(report), str(report)
    assert "not-the-secret" not in str(report) and MAILER.secret not in str(report)


def test_no_token_or_secret_reaches_a_log(oauth, secret):
    with mx.connect(oauth_cfg(oauth)) as s:      # at least one token of this test's own
        assert s.authenticated
    log = oauth.log()
    assert oauth.issuer.issued
    for token in oauth.issuer.issued:
        assert token not in log and token.split(".")[2][:32] not in log
    for app in APPS.values():
        assert app.secret not in log and base64.b64encode(app.secret.encode()).decode() not in log
    assert re.search(r"sasl_method=XOAUTH2, sasl_username=" + re.escape(MAILER.mailbox), log)
