"""The fix for each finding, per server family, with the real names.

Families: Exchange 2013 and later (2013/2016/2019), Exchange 2007/2010,
Exchange 2003, Exchange Online, Postfix, Exim, and a generic text.  Sources:
EXCHANGE.md (Microsoft documentation and what real servers answered).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["AUTH_CAUSES", "ONPREM_465", "onprem_465", "REPLY_CAUSES", "AdviceContext", "advice", "auth_cause", "family_label", "guess_family",
           "reply_cause"]

EXCHANGE_MODERN = ("exchange2013", "exchange2016", "exchange2019")
EXCHANGE_CLASSIC = ("exchange2007", "exchange2010")


@dataclass(frozen=True)
class AdviceContext:
    family: str | None          # a config server_family value, or None
    connector: str              # e.g. 'EX01\\Client Frontend EX01'
    account: str                # e.g. 'CORP\\svc-mailer'
    host: str
    port: int
    sender: str | None = None   # the address a finding is about
    reply_code: int | None = None
    enhanced: str | None = None
    reply_text: str | None = None
    mechanism: str | None = None    # the SASL mechanism a finding is about
    cause: str | None = None        # one of AUTH_CAUSES (auth findings)
    provider_code: str | None = None    # AADSTS... from the token endpoint
    detail: str | None = None       # what the diagnosis found out (token claims, ...)
    offered: tuple[str, ...] = ()   # mechanisms the server offers (after TLS)
    oauth_configured: bool = False
    app_id: str | None = None
    mailbox: str | None = None
    stage: str | None = None        # where a sender was refused (MAIL, RCPT, END_OF_DATA)
    refused_by: str | None = None   # "envelope" or "header": which check refused a sender
    wrong_mode: str | None = None   # the security the port really speaks ("starttls" or "ssl")


def family_label(family: str | None) -> str:
    return {
        "exchange2003": "Exchange 2003", "exchange2007": "Exchange 2007", "exchange2010": "Exchange 2010",
        "exchange2013": "Exchange 2013 or later", "exchange2016": "Exchange 2016",
        "exchange2019": "Exchange 2019", "exchange_online": "Exchange Online", "postfix": "Postfix",
        "exim": "Exim", "other": "another server",
    }.get(family or "", "an unknown server")


def guess_family(banner: str, ehlo_lines: list[str]) -> str | None:
    """The server family from what it says of itself (None if it does not)."""
    text = banner.lower()
    if "microsoft esmtp mail service" in text:
        host = text.split()[0] if text.split() else ""
        if host.endswith(("outlook.com", "office365.com")):
            return "exchange_online"
        if "version: 6." in text or "version: 5." in text:
            return "exchange2003"
        return "exchange2013"
    if "postfix" in text:
        return "postfix"
    if "exim" in text:
        return "exim"
    caps = " ".join(ehlo_lines).upper()
    if "X-EXPS" in caps or "XEXCH50" in caps:
        return "exchange2013"
    return None


# Why AUTH failed, from the reply class, the enhanced code and the known
# wordings (EXCHANGE.md): one enhanced code (5.7.139) covers three causes.
AUTH_CAUSES = (
    "temporary", "token_endpoint", "token_rejected", "oauth_permission", "basic_auth_disabled",
    "smtp_auth_disabled_tenant", "smtp_auth_disabled_mailbox", "bad_credentials", "basic_auth_retired",
    "mechanism_refused", "integrated_failed", "kerberos_failed", "refused",
)
_OAUTH = ("XOAUTH2", "OAUTHBEARER")


def auth_cause(code: int | None, enhanced: str | None, text: str | None, *, mechanism: str | None = None,
               oauth_challenge: str | None = None, provider_code: str | None = None) -> str:
    """The cause of a failed AUTH (one of `AUTH_CAUSES`).  A 4xx is
    ``temporary`` whatever it says: never a verdict on the credentials."""
    words = (text or "").lower()
    mech = (mechanism or "").upper()
    if code is None:        # nothing came from the mail server: the client side failed
        if provider_code or mech in _OAUTH:
            return "token_endpoint"
        return {"GSSAPI": "kerberos_failed", "NTLM": "integrated_failed"}.get(mech, "refused")
    if 400 <= code < 500:
        return "temporary"
    if code == 504 or enhanced == "5.7.4":
        return "mechanism_refused"
    if enhanced == "5.7.30" or "basic authentication is not supported" in words:
        return "basic_auth_retired"
    if enhanced == "5.7.139" or "smtpclientauthentication" in words:
        if "smtpclientauthentication is disabled for the tenant" in words:
            return "smtp_auth_disabled_tenant"
        if "smtpclientauthentication is disabled for the mailbox" in words:
            return "smtp_auth_disabled_mailbox"
        if "basic authentication is disabled" in words:
            return "basic_auth_disabled"
        if "credentials were incorrect" in words:
            return "bad_credentials"
        return "refused"
    if mech in _OAUTH:
        return "token_rejected" if oauth_challenge else "oauth_permission"
    if mech == "NTLM":
        return "integrated_failed"
    if mech == "GSSAPI":
        return "kerberos_failed"
    return "bad_credentials"


# What a reply to MAIL, RCPT or end of data means, from its class, its
# enhanced code and the known wordings together (EXCHANGE.md).  The class
# decides whether it is a verdict at all: a 4xx never is.
REPLY_CAUSES = (
    "accepted", "temporary", "rate_limited", "not_authenticated", "tls_required", "send_as_denied",
    "sender_not_owned", "relay_denied", "recipient_unknown", "quota", "refused",
)


def reply_cause(code: int | None, enhanced: str | None, text: str | None) -> str:
    """The cause of a reply to a sender probe or a message (one of
    `REPLY_CAUSES`).  Transient replies (4xx) are ``temporary`` or
    ``rate_limited`` whatever their words: never a verdict on permissions."""
    words = (text or "").lower()
    if code is None:
        return "refused"
    if 200 <= code < 400:
        return "accepted"
    if 400 <= code < 500:
        if enhanced in ("4.4.2", "4.3.2") or "limit" in words or "rate" in words:
            return "rate_limited"
        return "temporary"
    if enhanced in ("5.7.60", "5.2.252") or "sendasdenied" in words or "permissions to send as" in words:
        return "send_as_denied"         # Exchange: envelope (MAIL) or header (end of data) Send As
    if "not owned by user" in words:
        return "sender_not_owned"       # Postfix reject_authenticated_sender_login_mismatch
    if enhanced == "5.7.54" or "unable to relay" in words or "relay access denied" in words:
        return "relay_denied"
    if enhanced == "5.7.57" or "not authenticated" in words or "authentication required" in words:
        return "not_authenticated"
    if "starttls" in words and code == 530:
        return "tls_required"
    if enhanced in ("5.1.1", "5.1.10") or "recipientnotfound" in words or "user unknown" in words:
        return "recipient_unknown"
    if enhanced in ("5.2.0", "5.7.233") or "quota" in words:
        return "quota"
    return "refused"


def _kind(family: str | None) -> str:
    if family in EXCHANGE_MODERN:
        return "ex2013"
    if family in EXCHANGE_CLASSIC:
        return "ex2007"
    if family in ("exchange2003", "exchange_online", "postfix", "exim"):
        return family
    return "generic"


def _connector_ui(kind: str, c: AdviceContext, what: str) -> str:
    if kind == "ex2013":
        return (f"Exchange admin center → mail flow → receive connectors → \"{c.connector}\" → "
                f"security: {what}")
    if kind == "ex2007":
        return (f"Exchange Management Console → Server Configuration → Hub Transport → "
                f"Receive Connectors → \"{c.connector}\" → Properties → {what}")
    return what


def _add_ad_permission(c: AdviceContext, right: str) -> str:
    return f'Add-ADPermission "{c.connector}" -User "{c.account}" -ExtendedRights {right}'


def advice(check: str, c: AdviceContext) -> str:
    """The fix for a check that did not pass."""
    kind = _kind(c.family)
    fn = _ADVICE.get(check)
    return fn(kind, c) if fn else ""


def onprem_465(family: str | None, port: int | None) -> bool:
    """On-premises Exchange (2013 and later; 2007/2010 too) on port 465."""
    return port == 465 and _kind(family) in ("ex2013", "ex2007")


ONPREM_465 = ("On on-premises Exchange, port 465 is the \"Client Proxy <server>\" receive connector: a back-end "
              "(hub transport) connector the frontend proxies to, not client SMTPS. Clients submit to the "
              "\"Client Frontend <server>\" connector on port 587 with STARTTLS: set port = 587 and "
              "security = \"starttls\".")


def _with_465(fn: Callable[[str, AdviceContext], str]) -> Callable[[str, AdviceContext], str]:
    def wrapped(kind: str, c: AdviceContext) -> str:
        text = fn(kind, c)
        return f"{ONPREM_465} {text}" if onprem_465(c.family, c.port) else text
    return wrapped


def _resolve(kind: str, c: AdviceContext) -> str:
    return (f"The name {c.host!r} does not resolve from this machine: check the host setting, "
            "the DNS servers in use and any split-horizon zone.")


def _connect(kind: str, c: AdviceContext) -> str:
    text = (f"Nothing accepted a connection on {c.host} port {c.port}: check the port (587 for "
            "STARTTLS, 465 for implicit TLS), firewalls between here and the server, and that the "
            "service listens on that address.")
    if kind in ("ex2013", "ex2007"):
        text += (f" Get-ReceiveConnector \"{c.connector}\" | fl Bindings,Enabled shows where the "
                 "connector listens.")
    return text


def _banner(kind: str, c: AdviceContext) -> str:
    return ("The server refused the session in its greeting: this client's address may be blocked, "
            "or the service is paused. Check the connector's RemoteIPRanges (Exchange) or the "
            "server's client access restrictions.")


def _ehlo(kind: str, c: AdviceContext) -> str:
    return ("The server refused EHLO: it does not speak ESMTP on this port, or refuses this client. "
            "A submission connector must accept EHLO.")


def _tls(kind: str, c: AdviceContext) -> str:
    if kind in ("ex2013", "ex2007"):
        return ("Give the connector a valid certificate whose name matches "
                f"{c.host!r}: Get-ExchangeCertificate, then Enable-ExchangeCertificate -Thumbprint "
                "<thumbprint> -Services SMTP, and make sure the connector offers TLS: "
                f"Set-ReceiveConnector \"{c.connector}\" -AuthMechanism Tls,BasicAuth,BasicAuthRequireTLS "
                "-RequireTLS $true. Clients must trust the certificate's issuer (set ca_file for a "
                "private CA).")
    if kind == "exchange2003":
        return ("In Exchange System Manager → Servers → <server> → Protocols → SMTP → the "
                "submission virtual server → Properties → Access → Certificate: install a "
                f"certificate for {c.host!r}, then under Secure communication tick 'Require secure "
                "channel'.")
    if kind == "postfix":
        return ("Set smtpd_tls_cert_file / smtpd_tls_key_file to a certificate for "
                f"{c.host!r} and, for the submission service in master.cf, "
                "-o smtpd_tls_security_level=encrypt.")
    if kind == "exim":
        return ("Set tls_certificate / tls_privatekey to a certificate for "
                f"{c.host!r} and tls_advertise_hosts = *.")
    return (f"Install a certificate whose name matches {c.host!r}, issued by a CA clients trust, "
            "and offer STARTTLS (or implicit TLS on 465).")


def _auth_requires_tls(kind: str, c: AdviceContext) -> str:
    if kind in ("ex2013", "ex2007"):
        ui = _connector_ui(kind, c, "tick \"Offer basic authentication only after starting TLS\"" if kind == "ex2013"
                           else "Authentication tab: tick \"Offer Basic authentication only after starting TLS\"")
        return (f"{ui}. Or: Set-ReceiveConnector \"{c.connector}\" -AuthMechanism "
                "Tls,BasicAuth,BasicAuthRequireTLS")
    if kind == "exchange2003":
        return ("Exchange System Manager → the SMTP virtual server → Properties → Access → "
                "Authentication: keep 'Basic authentication' and tick 'Requires TLS encryption'.")
    if kind == "postfix":
        return "Set smtpd_tls_auth_only = yes (main.cf, or -o for the submission service in master.cf)."
    if kind == "exim":
        return "Set auth_advertise_hosts = ${if eq{$tls_in_cipher}{}{}{*}} so AUTH is offered only under TLS."
    return "Configure the server to offer AUTH PLAIN/LOGIN only after STARTTLS."


def _auth_mechanisms(kind: str, c: AdviceContext) -> str:
    if kind == "exchange_online" or any(m in _OAUTH for m in c.offered):
        if not c.oauth_configured and any(m in _OAUTH for m in c.offered):
            return ("The server takes OAuth (XOAUTH2) and this config has no token source: " + _OAUTH_SETUP +
                    "; " + _oauth_steps(c))
        return ("Exchange Online offers AUTH LOGIN XOAUTH2 after STARTTLS; OAuth is the way: " + _OAUTH_SETUP
                + ".")
    if kind in ("ex2013", "ex2007", "generic") and {"NTLM", "GSSAPI"} & set(c.offered) and not c.oauth_configured:
        return ("The connector offers only Integrated Windows authentication (" + " ".join(c.offered) + "): "
                "install mailexpress[windows-auth] (pyspnego) so NTLM or Kerberos can be used, with the user "
                "name as DOMAIN\\user, or turn Basic back on: Set-ReceiveConnector \"" + c.connector +
                "\" -AuthMechanism Tls,Integrated,BasicAuth,BasicAuthRequireTLS.")
    if kind in ("ex2013", "ex2007"):
        ui = _connector_ui(kind, c, "tick \"Basic authentication\" and \"Offer basic authentication only after "
                           "starting TLS\"" if kind == "ex2013" else
                           "Authentication tab: tick \"Basic Authentication\" and \"Offer Basic authentication "
                           "only after starting TLS\"")
        return (f"{ui}. Or: Set-ReceiveConnector \"{c.connector}\" -AuthMechanism "
                "Tls,Integrated,BasicAuth,BasicAuthRequireTLS. (Exchange offers LOGIN, never PLAIN.)")
    if kind == "exchange2003":
        return ("Exchange System Manager → the SMTP virtual server → Properties → Access → "
                "Authentication: tick 'Basic authentication' (with 'Requires TLS encryption').")
    if kind == "postfix":
        return ("Enable SASL for submission: smtpd_sasl_auth_enable = yes with smtpd_sasl_type = dovecot "
                "and a Dovecot auth service offering plain and login (auth_mechanisms = plain login).")
    if kind == "exim":
        return "Define plaintext authenticators for PLAIN and LOGIN (server_advertise_condition on TLS)."
    return "Enable AUTH PLAIN or LOGIN on the submission service."


_APP_REGISTRATION = (
    "In Microsoft Entra ID → App registrations → {app} → API permissions: add the application "
    "permission SMTP.SendAsApp of \"Office 365 Exchange Online\" (APIs my organization uses) and "
    "grant admin consent")
_SERVICE_PRINCIPAL = (
    "in Exchange Online PowerShell register the app and give it the mailbox: "
    "New-ServicePrincipal -AppId {app} -ObjectId <enterprise app object id>, then "
    "Add-MailboxPermission -Identity \"{mailbox}\" -User <service principal> -AccessRights FullAccess")
_OAUTH_SETUP = ("configure OAuth: oauth_tenant, oauth_client_id and oauth_client_secret_env (or "
                "oauth_certificate_file), or pass token_provider=... (docs/exchange.md, \"Exchange Online "
                "with OAuth\")")


def _names(c: AdviceContext) -> tuple[str, str]:
    return c.app_id or "<app id>", c.mailbox or c.account or "<mailbox>"


def _oauth_steps(c: AdviceContext) -> str:
    app, mailbox = _names(c)
    return (_APP_REGISTRATION.format(app=app) + "; " + _SERVICE_PRINCIPAL.format(app=app, mailbox=mailbox)
            + ".")


def _auth(kind: str, c: AdviceContext) -> str:
    cause = c.cause or auth_cause(c.reply_code, c.enhanced, c.reply_text, mechanism=c.mechanism,
                                  provider_code=c.provider_code)
    app, mailbox = _names(c)
    detail = f" ({c.detail})" if c.detail else ""
    if cause == "temporary":
        return ("The server had a temporary failure (a 4xx reply, e.g. Exchange Online's 451 4.7.0 PRX4): "
                "this says nothing about the credentials. Run the diagnosis again in a few minutes; if it "
                "persists, check the Microsoft 365 service health.")
    if cause == "token_endpoint":
        return _token_endpoint(c)
    if cause == "token_rejected":
        return ("The server refused the access token itself (its 334 error challenge)" + detail + ": the token "
                "must be issued by your tenant for the scope https://outlook.office365.com/.default (claim "
                "aud = https://outlook.office365.com), not for Microsoft Graph, and not be expired (check this "
                "machine's clock). Set oauth_scope to https://outlook.office365.com/.default or leave it unset.")
    if cause == "oauth_permission":
        first = ("The token is valid but the application may not use SMTP for this mailbox" + detail + ". ")
        if c.detail and "roles lack SMTP.SendAsApp" in c.detail:
            return first + _APP_REGISTRATION.format(app=app) + "; then request a new token."
        return first + _oauth_steps(c) + f" The user name must be the mailbox address ({mailbox})."
    if cause == "basic_auth_disabled":
        return ("Basic authentication (LOGIN/PLAIN) for SMTP AUTH is disabled for this tenant — Exchange "
                "Online's default from the end of December 2026. Use OAuth: " + _OAUTH_SETUP + "; " +
                _oauth_steps(c))
    if cause == "smtp_auth_disabled_tenant":
        return ("SMTP AUTH is disabled for the whole tenant: Set-TransportConfig -SmtpClientAuthenticationDisabled "
                f"$false (or only for this mailbox: Set-CASMailbox -Identity \"{mailbox}\" "
                "-SmtpClientAuthenticationDisabled $false). This applies to OAuth (XOAUTH2) too.")
    if cause == "smtp_auth_disabled_mailbox":
        return (f"SMTP AUTH is disabled for the mailbox {mailbox}: Set-CASMailbox -Identity \"{mailbox}\" "
                "-SmtpClientAuthenticationDisabled $false (check with Get-CASMailbox -Identity "
                f"\"{mailbox}\" | Format-List SmtpClientAuthenticationDisabled; $null follows the tenant's "
                "Set-TransportConfig -SmtpClientAuthenticationDisabled). This applies to OAuth (XOAUTH2) too.")
    if cause == "basic_auth_retired":
        return ("Basic authentication is retired for client submission on this tenant (550 5.7.30) and cannot be "
                "turned back on: " + _OAUTH_SETUP + "; " + _oauth_steps(c))
    if cause == "mechanism_refused":
        mech = c.mechanism or "the mechanism"
        if kind in ("ex2013", "ex2007"):
            return (f"The connector does not accept {mech}: Set-ReceiveConnector \"{c.connector}\" -AuthMechanism "
                    "Tls,Integrated,BasicAuth,BasicAuthRequireTLS (Integrated = NTLM and Kerberos; Exchange "
                    "offers LOGIN, never PLAIN), or set auth_mechanisms to one the server offers"
                    + (f" ({' '.join(c.offered)})" if c.offered else "") + ".")
        return (f"The server does not accept {mech}; set auth_mechanisms to one it offers"
                + (f" ({' '.join(c.offered)})" if c.offered else "") + ".")
    if cause == "integrated_failed":
        submit = (f" The connector must also grant Exchange users the right to submit: "
                  f"{_add_ad_permission(c, 'ms-Exch-SMTP-Submit')}" if kind in ("ex2013", "ex2007") else "")
        return (f"NTLM was refused for {c.account!r}: give the user name as DOMAIN\\user (or user@domain) and "
                "check the password and that the account is enabled and not locked. On the server, Integrated "
                f"Windows authentication must be on for the connector (Set-ReceiveConnector \"{c.connector}\" "
                "-AuthMechanism Tls,Integrated,BasicAuth,BasicAuthRequireTLS) and NTLM must not be blocked by "
                "the domain's \"Network security: Restrict NTLM\" policy or an LmCompatibilityLevel this client "
                "cannot meet (mailexpress speaks NTLMv2)." + submit)
    if cause == "kerberos_failed":
        return (f"Kerberos (GSSAPI) failed: the server needs a service principal SMTP/{c.host} registered to the "
                f"account that runs it (setspn -L <account> lists it; setspn -S SMTP/{c.host} <account> adds "
                "it) and, for Exchange behind a load balancer, the Alternate Service Account credential. This "
                "client needs a ticket (klist; kinit user@REALM, or a keytab: KRB5_CLIENT_KTNAME) and must ask "
                "for the name in the SPN (kerberos_service, default smtp, and the host it connects to); "
                "clocks must agree within 5 minutes.")
    if cause == "bad_credentials" and kind == "exchange_online":
        return (f"Exchange Online says the credentials of {c.account!r} were incorrect: the user name must be the "
                "full address (UPN) and the password current; Security Defaults or Conditional Access can block "
                "basic authentication. The lasting fix is OAuth: " + _OAUTH_SETUP + ".")
    base = (f"The server refused the credentials of {c.account!r}: check the user name (as the server "
            "expects it: DOMAIN\\user or user@domain), the password, and that the account is enabled "
            "and not locked.")
    if kind in ("ex2013", "ex2007"):
        base += (f" The connector must also grant Exchange users the right to submit: "
                 f"{_add_ad_permission(c, 'ms-Exch-SMTP-Submit')}")
    return base


# Microsoft Entra ID token endpoint errors (AADSTS codes) and their fixes
_AADSTS = {
    "AADSTS7000215": "the client secret is wrong: create a new one under App registrations → {app} → "
                     "Certificates & secrets and store its Value (not its Secret ID) where "
                     "oauth_client_secret_env/oauth_client_secret_file points",
    "AADSTS7000222": "the client secret has expired: create a new one under App registrations → {app} → "
                     "Certificates & secrets",
    "AADSTS700016": "no application {app} in that tenant: check oauth_client_id (the Application (client) ID "
                    "of the app registration) and oauth_tenant (the tenant it is registered in)",
    "AADSTS90002": "the tenant was not found: oauth_tenant must be your tenant ID (a GUID) or a verified "
                   "domain such as contoso.onmicrosoft.com",
    "AADSTS700027": "the certificate does not match one uploaded to the app registration: upload its public "
                    "part under Certificates & secrets, or point oauth_certificate_file at the right PEM",
    "AADSTS7000112": "the application is disabled in the tenant: enable the enterprise application",
    "AADSTS65001": "admin consent is missing: grant admin consent for SMTP.SendAsApp under API permissions",
    "AADSTS70011": "the scope is not valid for client credentials: use https://outlook.office365.com/.default",
}


def _token_endpoint(c: AdviceContext) -> str:
    app = c.app_id or "<app id>"
    fix = _AADSTS.get(c.provider_code or "")
    if fix:
        return f"The token endpoint refused the request ({c.provider_code}): " + fix.format(app=app) + "."
    return ("No token could be had from the identity provider" + (f" ({c.provider_code})" if c.provider_code else "")
            + ": check oauth_tenant, oauth_client_id and the client secret or certificate, that this machine can "
            "reach login.microsoftonline.com (or oauth_authority), and the provider's error above.")


def _anonymous(kind: str, c: AdviceContext) -> str:
    if kind in ("ex2013", "ex2007"):
        ui = _connector_ui(kind, c, "clear \"Anonymous users\" (keep \"Exchange users\")" if kind == "ex2013"
                           else "Permission Groups tab: clear \"Anonymous users\", keep \"Exchange users\"")
        return f"{ui}. Or: Set-ReceiveConnector \"{c.connector}\" -PermissionGroups ExchangeUsers"
    if kind == "exchange2003":
        return ("Exchange System Manager → the SMTP virtual server → Properties → Access → "
                "Authentication: clear 'Anonymous access'.")
    if kind == "postfix":
        return ("For the submission service in master.cf: -o smtpd_client_restrictions=permit_sasl_authenticated,reject "
                "-o smtpd_relay_restrictions=permit_sasl_authenticated,reject")
    if kind == "exim":
        return "In acl_smtp_rcpt (or acl_smtp_mail) for the submission port: deny !authenticated = *"
    return "Require authentication for every sender on the submission service."


def _sender_right(right: str, what: str) -> Callable[[str, AdviceContext], str]:
    def fn(kind: str, c: AdviceContext) -> str:
        if kind in ("ex2013", "ex2007"):
            shell = (" In the Exchange Management Shell (the Management Console does not show these rights):"
                     if kind == "ex2007" else "")
            return (f"Grant the account the right to send as {what}:{shell} {_add_ad_permission(c, right)}  "
                    f"(check with: Get-ADPermission \"{c.connector}\" -User \"{c.account}\")")
        if kind == "exchange2003":
            return (f"Exchange 2003 has no connector rights: grant {c.account!r} \"Send As\" on the "
                    "server object (Exchange System Manager → Servers → <server> → Properties → Security), "
                    "then restart the SMTP service: net stop smtpsvc && net start smtpsvc")
        if kind == "exchange_online":
            return (f"Grant Send As on the mailbox of {c.sender or 'the sender'}: Add-RecipientPermission "
                    f"-Identity \"{c.sender or '<mailbox>'}\" -Trustee \"{c.account}\" -AccessRights SendAs")
        if kind == "postfix":
            if right == "ms-Exch-SMTP-Accept-Any-Sender":
                line = f"\"/.*/ {c.account}\" last in a regexp: map"
            else:
                line = f"\"{_map_key(c.sender, right)} {c.account}\""
            where = ("smtpd_end_of_data_restrictions (where this server checks it: the refusal came at end "
                     "of data)" if c.stage == "END_OF_DATA" else "smtpd_sender_restrictions")
            return (f"Map the sender to the login in smtpd_sender_login_maps, e.g. a line {line}, with "
                    f"reject_authenticated_sender_login_mismatch in {where}; then postmap "
                    "the map (for hash:/lmdb:) and postfix reload.")
        if kind == "exim":
            return (f"Allow {c.account!r} to use {c.sender or 'this sender'} in the MAIL ACL "
                    "(the condition comparing $sender_address with $authenticated_id).")
        return f"Allow the account {c.account!r} to send as {what} on the server."
    return fn


def _map_key(sender: str | None, right: str) -> str:
    if not sender:
        return "<sender>"
    if right == "ms-Exch-SMTP-Accept-Authoritative-Domain-Sender":
        return "@" + sender.rpartition("@")[2]
    return sender


def _send_as_self(kind: str, c: AdviceContext) -> str:
    if kind in ("ex2013", "ex2007"):
        return (f"The account may not even send as {c.sender!r}: make it the account's own primary "
                f"address, or grant {_add_ad_permission(c, 'ms-Exch-SMTP-Accept-Authoritative-Domain-Sender')}")
    return _sender_right("ms-Exch-SMTP-Accept-Authoritative-Domain-Sender", "its From address")(kind, c)


def _header_from(kind: str, c: AdviceContext) -> str:
    if kind in ("ex2013", "ex2007"):
        return (f"Exchange checks the From header at end of data (Send As). Grant Send As on the mailbox "
                f"of {c.sender!r}: Add-ADPermission -Identity \"{c.sender}\" -User \"{c.account}\" "
                "-AccessRights ExtendedRight -ExtendedRights \"Send As\", or grant "
                f"{_add_ad_permission(c, 'ms-Exch-SMTP-Accept-Any-Sender')} (which skips the check).")
    if kind == "exchange_online":
        return (f"Grant Send As on {c.sender!r}: Add-RecipientPermission -Identity \"{c.sender}\" "
                f"-Trustee \"{c.account}\" -AccessRights SendAs")
    if kind == "exchange2003":
        return _sender_right("Send As", "this sender")(kind, c)
    if kind == "postfix":
        return ("The check sits in smtpd_end_of_data_restrictions or a milter: allow this From address "
                "for the login there.")
    return f"Allow the account {c.account!r} to use {c.sender!r} as the From header."


def _wrong_mode(kind: str, c: AdviceContext) -> str:
    """The port speaks another security mode than the config says."""
    if c.wrong_mode == "starttls":
        fix = (f"Port {c.port} greets in plain text and is upgraded with STARTTLS: set "
               "security = \"starttls\" (client submission is port 587 with STARTTLS).")
    else:
        fix = (f"Port {c.port} speaks implicit TLS (SMTPS) from the first byte: set "
               "security = \"ssl\", or submit to the STARTTLS port (587) with security = \"starttls\".")
    return fix + (" " + ONPREM_465 if onprem_465(c.family, c.port) else "")


_ADVICE = {
    "wrong_mode": _wrong_mode,
    "resolve": _resolve,
    "connect": _with_465(_connect),
    "banner": lambda kind, c: ONPREM_465 if onprem_465(c.family, c.port) else _banner(kind, c),
    "ehlo": _with_465(_ehlo),
    "tls": _with_465(_tls),
    "auth_requires_tls": _auth_requires_tls,
    "auth_mechanisms": _auth_mechanisms,
    "auth": _auth,
    "anonymous_refused": _anonymous,
    "send_as_self": _send_as_self,
    "accept_authoritative_domain_sender": _sender_right(
        "ms-Exch-SMTP-Accept-Authoritative-Domain-Sender", "addresses in the authoritative domain"),
    "accept_any_sender": _sender_right("ms-Exch-SMTP-Accept-Any-Sender", "external addresses"),
    "header_from": _header_from,
}
