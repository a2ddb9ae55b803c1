"""The fix for each finding, per server family, with the real names.

Families: Exchange 2013 and later (2013/2016/2019), Exchange 2007/2010,
Exchange 2003, Exchange Online, Postfix, Exim, and a generic text.  Sources:
EXCHANGE.md (Microsoft documentation and what real servers answered).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["AdviceContext", "advice", "family_label", "guess_family"]

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
    if kind in ("ex2013", "ex2007"):
        ui = _connector_ui(kind, c, "tick \"Basic authentication\" and \"Offer basic authentication only after "
                           "starting TLS\"" if kind == "ex2013" else
                           "Authentication tab: tick \"Basic Authentication\" and \"Offer Basic authentication "
                           "only after starting TLS\"")
        return (f"{ui}. Or: Set-ReceiveConnector \"{c.connector}\" -AuthMechanism "
                "Tls,Integrated,BasicAuth,BasicAuthRequireTLS. (Exchange offers LOGIN, never PLAIN.)")
    if kind == "exchange_online":
        return ("Exchange Online is retiring basic authentication for client submission; while the "
                "tenant still allows it: Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled "
                "$false. The way forward is OAuth (XOAUTH2).")
    if kind == "exchange2003":
        return ("Exchange System Manager → the SMTP virtual server → Properties → Access → "
                "Authentication: tick 'Basic authentication' (with 'Requires TLS encryption').")
    if kind == "postfix":
        return ("Enable SASL for submission: smtpd_sasl_auth_enable = yes with smtpd_sasl_type = dovecot "
                "and a Dovecot auth service offering plain and login (auth_mechanisms = plain login).")
    if kind == "exim":
        return "Define plaintext authenticators for PLAIN and LOGIN (server_advertise_condition on TLS)."
    return "Enable AUTH PLAIN or LOGIN on the submission service."


def _auth(kind: str, c: AdviceContext) -> str:
    if c.enhanced == "5.7.139" or (kind == "exchange_online" and c.enhanced and c.enhanced.startswith("5.7.1")):
        return ("SMTP AUTH is disabled for the tenant or the mailbox: Set-TransportConfig "
                "-SmtpClientAuthenticationDisabled $false (tenant) or Set-CASMailbox -Identity <mailbox> "
                "-SmtpClientAuthenticationDisabled $false; basic authentication is being retired, plan OAuth.")
    if c.enhanced == "5.7.30":
        return "Basic authentication is retired for client submission on this tenant: use OAuth (XOAUTH2)."
    if c.reply_code == 504:
        return ("The server does not recognise the mechanism used; Exchange offers only LOGIN for basic "
                "authentication (set auth_mechanisms = [\"LOGIN\"] or leave the default).")
    base = (f"The server refused the credentials of {c.account!r}: check the user name (as the server "
            "expects it: DOMAIN\\user or user@domain), the password, and that the account is enabled "
            "and not locked.")
    if kind in ("ex2013", "ex2007"):
        base += (f" The connector must also grant Exchange users the right to submit: "
                 f"{_add_ad_permission(c, 'ms-Exch-SMTP-Submit')}")
    return base


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
            return (f"Map the sender to the login in smtpd_sender_login_maps, e.g. a line {line}, with "
                    "reject_authenticated_sender_login_mismatch in smtpd_sender_restrictions; then postmap "
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


_ADVICE = {
    "resolve": _resolve,
    "connect": _connect,
    "banner": _banner,
    "ehlo": _ehlo,
    "tls": _tls,
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
