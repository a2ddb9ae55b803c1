"""test_connector on modern authentication, end to end through the library's
own path (mailexpress.auth.authenticate, the C core, real MSAL, pyspnego)
against the emulator's presets: the verdict and the fix for every failure
Exchange gives, told apart by reply class, enhanced code and wording."""
from __future__ import annotations

import base64
import json

import pytest
from fakeserver import serve_commands

import mailexpress as mx
from mailexpress.advice import AdviceContext, advice, auth_cause
from mailexpress.testing import ConnectorEmulator

MAILBOX = "svc-mailer@corp.example"


def everything(report: mx.ConnectorReport) -> str:
    return json.dumps(report.to_dict()) + str(report) + report._repr_html_()


def password_of(em: ConnectorEmulator) -> str:
    return next(iter(em.users.values())).password


def test_oauth_connector_passes_and_reports_mechanisms_before_and_after_tls(preset):
    em = preset()
    provider = em.token_provider()
    report = mx.test_connector(em.config(token_provider=provider, username=MAILBOX, password=None))
    assert report.ok, str(report)
    assert report.server["auth_mechanisms_before_tls"] == []
    assert report.server["auth_mechanisms"] == ["LOGIN", "XOAUTH2"]
    assert report.server["auth_mechanism"] == "XOAUTH2"
    mechs = report.check("auth_mechanisms")
    assert "S: 250-AUTH LOGIN XOAUTH2" in mechs.evidence and "   before TLS: no AUTH" in mechs.evidence
    assert "this config can use XOAUTH2" in mechs.summary
    assert report.check("auth").summary.endswith("authenticated with XOAUTH2")
    assert report.server["oauth_token"]["aud"] == "https://outlook.office365.com"
    assert report.server["oauth_token"]["roles"] == ["SMTP.SendAsApp"]
    assert provider.requests == 1            # the diagnosis reads the token the session uses: no second request
    assert [a.outcome for a in em.auth_log] == ["ok"]
    text = everything(report)
    assert "<token redacted>" in text
    token = em.issue_token(MAILBOX)
    assert token.split(".")[2] not in text and token.split(".")[0] not in text   # no JWT piece at all


def test_login_on_a_tenant_after_december_2026(preset):
    em = preset()
    report = mx.test_connector(em.config(username=MAILBOX, password=password_of(em)))
    auth = report.check("auth")
    assert auth.status == "fail" and "basic authentication is disabled for the tenant" in auth.summary
    assert "S: 535 5.7.139 Authentication unsuccessful, basic authentication is disabled." in "\n".join(
        auth.evidence)
    for words in ("oauth_tenant, oauth_client_id", "SMTP.SendAsApp", "admin consent", "New-ServicePrincipal -AppId",
                  f'Add-MailboxPermission -Identity "{MAILBOX}" -User <service principal> -AccessRights FullAccess'):
        assert words in auth.advice, words
    assert "credentials" not in auth.summary
    assert report.server["auth_mechanism"] is None and em.auth_log[-1].reason == "basic_auth_disabled"


def test_wrong_password_online_is_told_apart_from_basic_disabled(preset):
    em = preset(basic_auth="enabled")
    report = mx.test_connector(em.config(username=MAILBOX, password="not-the-password"))
    auth = report.check("auth")
    assert auth.status == "fail" and "refused by the server: 535 5.7.139" in auth.summary
    assert "credentials of" in auth.advice and "full address (UPN)" in auth.advice
    assert "SmtpClientAuthentication" not in auth.advice and "Set-CASMailbox" not in auth.advice
    assert "not-the-password" not in everything(report)


def test_basic_auth_turned_back_on_passes_with_login(preset):
    em = preset(basic_auth="enabled")
    report = mx.test_connector(em.config(username=MAILBOX, password=password_of(em)))
    assert report.ok and report.server["auth_mechanism"] == "LOGIN"


def test_smtp_auth_disabled_for_the_mailbox(preset):
    em = preset("exchange_online_smtp_auth_disabled")
    report = mx.test_connector(em.config())
    auth = report.check("auth")
    assert auth.status == "fail" and not report.ok
    assert f'Set-CASMailbox -Identity "{MAILBOX}" -SmtpClientAuthenticationDisabled $false' in auth.advice
    assert "Set-TransportConfig" in auth.advice and "OAuth (XOAUTH2) too" in auth.advice
    assert report.check("send_as_self").status == "skip"


def test_smtp_auth_disabled_for_the_tenant(preset):
    em = preset(smtp_client_auth_disabled="tenant")
    auth = mx.test_connector(em.config()).check("auth")
    assert auth.status == "fail" and "disabled for the tenant" in auth.summary
    assert auth.advice.startswith("SMTP AUTH is disabled for the whole tenant: Set-TransportConfig "
                                  "-SmtpClientAuthenticationDisabled $false")


def test_app_without_sendasapp(preset):
    em = preset("exchange_online_no_sendasapp")
    auth = mx.test_connector(em.config()).check("auth")
    assert auth.status == "fail" and "the token's roles lack SMTP.SendAsApp (roles: none)" in auth.summary
    assert ('add the application permission SMTP.SendAsApp of "Office 365 Exchange Online"' in auth.advice
            and "grant admin consent" in auth.advice and em.issuer.app_id in auth.advice)
    assert "error challenge" not in "\n".join(auth.evidence)        # the token itself was fine


def test_service_principal_without_fullaccess_on_the_mailbox(preset):
    em = preset()
    cfg = em.config(token_provider=em.token_provider(grant_mailbox=False), username=MAILBOX, password=None)
    auth = mx.test_connector(cfg).check("auth")
    assert auth.status == "fail" and "lacks FullAccess" in auth.summary
    assert f"New-ServicePrincipal -AppId {em.issuer.app_id} -ObjectId <enterprise app object id>" in auth.advice
    assert f'Add-MailboxPermission -Identity "{MAILBOX}" -User <service principal> -AccessRights FullAccess' \
        in auth.advice
    assert em.auth_log[-1].reason == "no_mailbox_permission"


@pytest.mark.parametrize("options, words", [
    ({"audience": "https://graph.microsoft.com"}, "the token's aud is 'https://graph.microsoft.com'"),
    ({"key": b"another tenant's signing key....."}, "error challenge"),
])
def test_token_refused_by_the_server_draws_its_own_advice(preset, options, words):
    em = preset()
    cfg = em.config(token_provider=em.token_provider(**options), username=MAILBOX, password=None)
    auth = mx.test_connector(cfg).check("auth")
    assert auth.status == "fail" and words in auth.summary
    ev = "\n".join(auth.evidence)
    assert '   error challenge: {"status":"401","schemes":"bearer","scope":"https://outlook.office365.com/.default"}' \
        in ev and "S: 535 5.7.3 Authentication unsuccessful [" in ev
    assert "https://outlook.office365.com/.default" in auth.advice and "clock" in auth.advice
    assert "SMTP.SendAsApp" not in auth.advice


def test_oauthbearer_error_challenge_in_the_evidence(preset):
    em = preset(auth_mechanisms=("OAUTHBEARER",))
    cfg = em.config(token_provider=em.token_provider(audience="https://graph.microsoft.com"),
                    username=MAILBOX, password=None, auth_mechanisms=["OAUTHBEARER"])
    auth = mx.test_connector(cfg).check("auth")
    assert auth.status == "fail" and "OAUTHBEARER" in auth.summary
    assert '"status":"invalid_token"' in "\n".join(auth.evidence)


def test_basic_auth_retired(preset):
    em = preset(basic_auth="retired")
    auth = mx.test_connector(em.config(username=MAILBOX, password=password_of(em))).check("auth")
    assert auth.status == "fail" and "retired" in auth.summary
    assert "550 5.7.30" in "\n".join(auth.evidence) and "cannot be turned back on" in auth.advice


@pytest.mark.parametrize("knobs, config", [
    ({}, {}),                                                       # XOAUTH2
    ({"basic_auth": "enabled"}, {"password": "pw"}),                # LOGIN
])
def test_transient_451_is_never_a_verdict_on_credentials(preset, knobs, config):
    em = preset(auth_temporary_failures=1, **knobs)
    if config:
        config = {"username": MAILBOX, "password": password_of(em)}
    report = mx.test_connector(em.config(**config))
    auth = report.check("auth")
    assert auth.status == "unknown" and "not a verdict on the credentials" in auth.summary
    assert not report.ok        # a required check left undecided: send_as would not work now
    assert "451 4.7.0 Temporary server error. Please try again later. PRX4" in auth.summary
    assert "says nothing about the credentials" in auth.advice and "password" not in auth.advice
    assert em.auth_log[-1].outcome == "temporary"
    again = mx.test_connector(em.config(**config))                  # the next attempt goes through
    assert again.check("auth").status == "pass" and again.ok


def test_onprem_basic_off_diagnosed_through_ntlm(preset):
    em = preset("basic_auth_off")
    report = mx.test_connector(em.config())
    assert report.ok, str(report)
    assert report.server["auth_mechanisms_before_tls"] == ["GSSAPI", "NTLM"]
    assert report.server["auth_mechanisms"] == ["GSSAPI", "NTLM"] and report.server["auth_mechanism"] == "NTLM"
    assert "C: AUTH NTLM <response redacted>" in report.check("auth").evidence
    assert "(before TLS only: GSSAPI NTLM, no password in the clear)" in report.check("auth_requires_tls").summary


def test_onprem_ntlm_wrong_password(preset):
    em = preset("basic_auth_off")
    auth = mx.test_connector(em.config(password="wrong-Passw0rd", service_account="CORP\\svc-mailer",
                                       connector_name="EX01\\Client Frontend EX01")).check("auth")
    assert auth.status == "fail" and "with NTLM refused by the server: 535 5.7.3" in auth.summary
    for words in ("DOMAIN\\user", "Restrict NTLM",
                  'Set-ReceiveConnector "EX01\\Client Frontend EX01" -AuthMechanism Tls,Integrated,BasicAuth',
                  'Add-ADPermission "EX01\\Client Frontend EX01" -User "CORP\\svc-mailer" -ExtendedRights '
                  "ms-Exch-SMTP-Submit"):
        assert words in auth.advice, words


def test_onprem_basic_off_with_login_pinned(preset):
    em = preset("basic_auth_off")
    report = mx.test_connector(em.config(auth_mechanisms=["LOGIN"], connector_name="EX01\\Client Frontend EX01"))
    mechs = report.check("auth_mechanisms")
    assert mechs.status == "fail" and "offered after TLS: GSSAPI NTLM" in mechs.summary
    assert "none this config can use (it has LOGIN)" in mechs.summary
    assert "Integrated Windows authentication (GSSAPI NTLM)" in mechs.advice
    assert "mailexpress[windows-auth]" in mechs.advice
    assert report.check("auth").status == "skip" and em.auth_log == []


def test_oauth_offered_but_not_configured(preset):
    em = preset()
    report = mx.test_connector(em.config(username=MAILBOX, password=password_of(em), auth_mechanisms=["PLAIN"]))
    mechs = report.check("auth_mechanisms")
    assert mechs.status == "fail" and "this config has no token source" in mechs.advice
    assert "SMTP.SendAsApp" in mechs.advice


def _fake_504(conn):
    def answer(line: bytes) -> bytes:
        if line.startswith(b"AUTH"):
            return b"504 5.7.4 Unrecognized authentication type\r\n"
        if line.startswith(b"EHLO"):        # (the line is read: answered here, not by conn.ehlo)
            return b"250-mail.corp.example Hello\r\n250 AUTH GSSAPI NTLM LOGIN\r\n"
        return b"530 5.7.1 Client was not authenticated\r\n"
    serve_commands(conn, b"220 mail.corp.example Microsoft ESMTP MAIL Service ready at Mon, 30 Nov 2026 20:00:00 "
                   b"+0000\r\n", [b"SIZE 37748736", b"PIPELINING", b"ENHANCEDSTATUSCODES", b"X-EXPS GSSAPI NTLM LOGIN",
                                   b"X-EXPS=LOGIN", b"AUTH GSSAPI NTLM LOGIN", b"AUTH=LOGIN"],
                   b"mail.corp.example Hello", answer, bye=b"221 2.0.0 Service closing transmission channel\r\n")


def test_exchange_2003_lines_merged_and_504_advice(fake_server):
    srv = fake_server(_fake_504)
    cfg = mx.Config(host="127.0.0.1", port=srv.port, security="none", allow_insecure_auth=True,
                    username="CORP\\svc", password="pw", from_address="svc@corp.example", auth_mechanisms=["LOGIN"],
                    server_family="exchange2016", connector_name="EX01\\Client Frontend EX01",
                    timeouts={"banner": 5, "ehlo": 5, "auth": 5, "mail": 5, "rcpt": 5, "command": 5, "quit": 5})
    report = mx.test_connector(cfg)
    assert report.server["auth_mechanisms"] == ["GSSAPI", "NTLM", "LOGIN"]
    mechs = report.check("auth_mechanisms")
    for line in ("S: 250-X-EXPS GSSAPI NTLM LOGIN", "S: 250-X-EXPS=LOGIN", "S: 250-AUTH GSSAPI NTLM LOGIN",
                 "S: 250 AUTH=LOGIN"):
        assert line in mechs.evidence, (line, mechs.evidence)
    auth = report.check("auth")
    assert auth.status == "fail" and "504" in auth.summary
    assert 'Set-ReceiveConnector "EX01\\Client Frontend EX01" -AuthMechanism Tls,Integrated,BasicAuth' in auth.advice


# -- the token endpoint (real MSAL against the emulator's Entra-shaped endpoint) ----

@pytest.mark.parametrize("override, code, words", [
    ({"oauth_client_secret": "a-wrong-secret"}, "AADSTS7000215", "create a new one"),
    ({"oauth_client_id": "00000000-1111-2222-3333-444444444444"}, "AADSTS700016", "check oauth_client_id"),
    ({"oauth_tenant": "nosuchtenant.onmicrosoft.com"}, "AADSTS90002", "oauth_tenant must be your tenant ID"),
])
def test_token_endpoint_failures(preset, monkeypatch, override, code, words):
    em = preset()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", em.ca_file)
    report = mx.test_connector(em.msal_config(**override))
    auth = report.check("auth")
    assert auth.status == "fail" and f"({code})" in auth.summary and "nothing was sent" in auth.summary
    assert auth.advice.startswith(f"The token endpoint refused the request ({code}): ") and words in auth.advice
    assert em.auth_log == []                                        # nothing reached the mail server
    assert "a-wrong-secret" not in everything(report)
    assert em.token_endpoint().refused[-1] == code


def test_msal_path_passes(preset, monkeypatch):
    em = preset()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", em.ca_file)
    report = mx.test_connector(em.msal_config(), deep=True)
    assert report.ok and report.server["auth_mechanism"] == "XOAUTH2"
    assert em.token_endpoint().token_requests == 1
    assert em.token_endpoint().client_secret not in everything(report)


# -- the classification itself ------------------------------------------------------

@pytest.mark.parametrize("code, enhanced, text, mech, challenge, cause", [
    (535, "5.7.139", "5.7.139 Authentication unsuccessful, basic authentication is disabled. [X]", "LOGIN", None,
     "basic_auth_disabled"),
    (535, "5.7.139", "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. "
     "Visit https://aka.ms/smtp_auth_disabled for more information. [X]", "LOGIN", None, "smtp_auth_disabled_tenant"),
    (535, "5.7.139", "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. "
     "[X]", "XOAUTH2", None, "smtp_auth_disabled_mailbox"),
    (535, "5.7.139", "5.7.139 Authentication unsuccessful, the user credentials were incorrect. [X]", "LOGIN", None,
     "bad_credentials"),
    (535, "5.7.3", "5.7.3 Authentication unsuccessful [X]", "XOAUTH2", '{"status":"401"}', "token_rejected"),
    (535, "5.7.3", "5.7.3 Authentication unsuccessful [X]", "XOAUTH2", None, "oauth_permission"),
    (535, "5.7.3", "5.7.3 Authentication unsuccessful", "LOGIN", None, "bad_credentials"),
    (535, "5.7.3", "5.7.3 Authentication unsuccessful", "NTLM", None, "integrated_failed"),
    (535, "5.7.3", "5.7.3 Authentication unsuccessful", "GSSAPI", None, "kerberos_failed"),
    (550, "5.7.30", "5.7.30 Basic authentication is not supported for Client Submission.", "LOGIN", None,
     "basic_auth_retired"),
    (504, "5.7.4", "5.7.4 Unrecognized authentication type", "PLAIN", None, "mechanism_refused"),
    (451, "4.7.0", "4.7.0 Temporary server error. Please try again later. PRX4", "XOAUTH2", None, "temporary"),
    # a transient reply is transient whatever its words say
    (454, "4.7.0", "4.7.0 the user credentials were incorrect", "LOGIN", None, "temporary"),
    (535, None, "Incorrect authentication data", "PLAIN", None, "bad_credentials"),   # Exim: no enhanced code
])
def test_auth_cause(code, enhanced, text, mech, challenge, cause):
    assert auth_cause(code, enhanced, text, mechanism=mech, oauth_challenge=challenge) == cause


def test_kerberos_advice_names_spn_keytab_and_ticket():
    ctx = AdviceContext(family="exchange2019", connector="EX01\\Client Frontend EX01", account="CORP\\svc",
                        host="mail.corp.example", port=587, cause="kerberos_failed", mechanism="GSSAPI")
    text = advice("auth", ctx)
    for words in ("SMTP/mail.corp.example", "setspn -S SMTP/mail.corp.example", "keytab", "klist", "kinit",
                  "kerberos_service"):
        assert words in text, words


def test_token_findings_never_keep_the_token():
    from mailexpress.diagnose import token_findings
    payload = base64.urlsafe_b64encode(json.dumps({"aud": "a", "roles": ["r"], "exp": 10}).encode()).decode()
    found = token_findings(f"h.{payload}.sig", now=20)
    assert found == {"aud": "a", "roles": ["r"], "scp": None, "appid": None, "tid": None, "upn": None,
                     "expires_in_s": -10}
    assert token_findings("opaque-token") is None and token_findings("a.!!!.c") is None


def test_token_mechanism_before_tls_fails_auth_requires_tls(preset):
    em = preset(auth_before_tls=True)
    report = mx.test_connector(em.config())
    check = report.check("auth_requires_tls")
    assert check.status == "fail" and "AUTH LOGIN XOAUTH2 is offered before STARTTLS" in check.summary
    assert "S: 250-AUTH LOGIN XOAUTH2" in check.evidence
    assert report.server["auth_mechanisms_before_tls"] == ["LOGIN", "XOAUTH2"]


def test_gssapi_without_a_ticket_or_user_name(preset, tmp_path, monkeypatch):
    """Kerberos with no ticket in the cache: a client-side failure (nothing
    from the server), classified by its mechanism; no account named None."""
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{tmp_path / 'no-ticket'}")
    krb5_conf = tmp_path / "krb5.conf"
    krb5_conf.write_text("[libdefaults]\n default_realm = CORP.EXAMPLE\n")
    monkeypatch.setenv("KRB5_CONFIG", str(krb5_conf))
    em = preset("basic_auth_off")
    report = mx.test_connector(em.config(username=None, password=None, auth_mechanisms=["GSSAPI"],
                                         server_name="mail.corp.example"))
    auth = report.check("auth")
    assert auth.status == "fail" and "None" not in auth.summary, auth.summary
    assert "the principal of the Kerberos ticket with GSSAPI" in auth.summary
    assert "setspn -S SMTP/mail.corp.example" in auth.advice and "klist" in auth.advice
