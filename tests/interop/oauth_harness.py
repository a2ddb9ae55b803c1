"""Real OAuth peers for the interop suite, on 127.0.0.1:

  Issuer          the signing key of the suite's own identity provider (RSA
                  2048, RS256, made with ``cryptography`` at start) and the
                  JWTs it signs (pyjwt);
  TokenEndpoint   a small HTTPS identity provider shaped like Microsoft Entra's
                  v2.0 endpoints, so that real MSAL
                  (``ConfidentialClientApplication``) talks to it unchanged:
                  ``/<tenant>/v2.0/.well-known/openid-configuration`` and
                  ``/<tenant>/oauth2/v2.0/token`` (client-credentials grant),
                  plus the JWKS; unknown tenant, unknown application and wrong
                  secret answer like Entra (AADSTS90002, AADSTS700016,
                  AADSTS7000215); it counts the token requests it served;
  OAuthHarness    harness.py's Postfix with a Dovecot of its own offering
                  ``LOGIN XOAUTH2 OAUTHBEARER`` after STARTTLS (what Exchange
                  Online offers, plus OAUTHBEARER): the oauth2 passdb validates
                  the JWTs locally (``introspection_mode = local``) against the
                  issuer's public key, laid out in a dict as
                  ``shared/<azp>/<alg>/<kid>`` (fs:posix).

What Dovecot checks on a token: signature (key by azp/alg/kid), ``exp``,
``nbf``, ``iat``, ``iss`` (``issuers``), ``aud`` against ``client_id`` (Debian's
2.3.19 carries the upstream 2.3.21 change: aud is checked against client_id,
not scope), ``roles`` through ``active_attribute`` (the application permission
``SMTP.SendAsApp``), and that the SASL user equals the token's ``email`` claim.
Entra's client-credentials tokens carry no mailbox: Exchange Online keeps the
app's right to a mailbox on its side (``Add-MailboxPermission``); Dovecot can
only see the token, so this identity provider writes the mailbox an app was
granted into ``email``.  A token for another mailbox is refused like Exchange
refuses an app without rights to it.

Dovecot's failure delay (``auth_failure_delay``) and its per-IP penalty (anvil's
``anvil-auth-penalty`` listener, disabled with ``mode = 0``) are off: every
loopback client shares one IP, and with the penalty a refused token would turn
the next ones into ``454 4.7.0 Temporary authentication failure``.
"""
from __future__ import annotations

import base64
import json
import re
import ssl
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from harness import PostfixHarness, dovecot_conf, free_port

from mailexpress.testing.token_endpoint import EntraTokenEndpoint

TENANT = "3f0e2c6a-7a0b-4c1e-9d55-5b1f0e6a9c01"        # a tenant id, as Entra's are GUIDs
EXCHANGE = "https://outlook.office365.com"              # the audience of Exchange's tokens
EXCHANGE_SCOPE = EXCHANGE + "/.default"
SEND_AS_APP = "SMTP.SendAsApp"                          # the application permission Exchange wants


@dataclass(frozen=True)
class App:
    """An application registration: client id, secret, the mailbox it was
    granted (Add-MailboxPermission) and its application permissions."""
    client_id: str
    secret: str
    mailbox: str
    roles: tuple[str, ...] = (SEND_AS_APP,)


APPS = {
    "mailer": App("6a1d7c54-0e2b-4b8e-a3c1-2f4d9e8b7a10", "mailer-s3cret~Value.1", "svc-oauth@corp.example"),
    # used by one test only: its token requests are counted from zero
    "bulk": App("9e4f1a37-2c6b-4d8a-b5e0-3a7c1d2e4f60", "bulk-s3cret~Value.3", "svc-bulk@corp.example"),
    # granted IMAP.AccessAsApp, but not SMTP.SendAsApp
    "noperm": App("0c9b3e21-5d4a-4f7c-8e62-7b1a2c3d4e50", "noperm-s3cret~Value.2", "svc-noperm@corp.example",
                  ("IMAP.AccessAsApp",)),
}
# a mailbox with a password too (Basic authentication, what Exchange still offers as LOGIN)
BASIC_ACCOUNT = ("svc-basic@corp.example", "basic-Passw0rd!")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Issuer:
    """The identity provider's signing key and the JWTs it signs."""

    def __init__(self, base_url: str, tenant: str = TENANT) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex[:16]
        self.tenant = tenant
        self.iss = f"{base_url}/{tenant}/v2.0"
        self.issued: list[str] = []       # every token signed, for the checks that none reached a log

    def public_pem(self) -> str:
        return self.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def claims(self, app: App, *, audience: str = EXCHANGE, lifetime: int = 3600, issued: float | None = None,
               mailbox: str | None = None) -> dict[str, Any]:
        """The claims of an Entra-style app-only access token (v2.0: azp = the client id)."""
        now = int(issued if issued is not None else time.time())
        return {
            "aud": audience, "iss": self.iss, "iat": now, "nbf": now, "exp": now + lifetime,
            "azp": app.client_id, "appid": app.client_id, "tid": self.tenant,
            "sub": f"sp-{app.client_id}", "oid": f"sp-{app.client_id}", "roles": list(app.roles),
            "email": mailbox or app.mailbox, "ver": "2.0",
        }

    def sign(self, claims: dict[str, Any], *, key: rsa.RSAPrivateKey | None = None, kid: str | None = None) -> str:
        token = jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": kid or self.kid, "typ": "JWT"})
        self.issued.append(token)
        return token

    def token(self, app: App, **kw: Any) -> str:
        return self.sign(self.claims(app, **kw))

    def token_of_size(self, app: App, size: int) -> str:
        """A valid token of exactly size characters (a large ``groups``-like
        padding claim, as tokens of users in many groups carry)."""
        claims = self.claims(app)
        base = len(self.sign({**claims, "pad": ""}))
        claims["pad"] = "x" * ((size - base) * 3 // 4)
        token = self.sign(claims)
        while len(token) < size:          # base64url rounding: a character or two short
            claims["pad"] += "x"
            token = self.sign(claims)
        assert len(token) in (size, size + 1, size + 2), (len(token), size)
        return token


class TokenEndpoint(EntraTokenEndpoint):
    """The package's Entra-shaped HTTPS token endpoint (what the emulator
    serves, mailexpress/testing/token_endpoint.py) with the suite's apps and
    its RS256 issuer, whose keys it publishes (JWKS) and whose JWTs Dovecot
    checks.  The port is chosen before start: the issuer's ``iss`` and
    Dovecot's configuration name it."""

    def __init__(self, apps: dict[str, App] | None = None, tenant: str = TENANT) -> None:
        port = free_port()
        self.issuer = Issuer(f"https://127.0.0.1:{port}", tenant)
        self.registered = {a.client_id: a for a in (apps or APPS).values()}
        super().__init__(tenant_id=tenant, apps={cid: a.secret for cid, a in self.registered.items()},
                         issue=self._sign, issuer_url=self.issuer.iss, jwks=self.issuer.jwks, port=port)
        self.tenant = tenant
        self.base_url = self.authority

    def _sign(self, client_id: str, audience: str, _expires_in: int) -> str:
        return self.issuer.token(self.registered[client_id], audience=audience)


def sasl_blob(mechanism: str, user: str, token: str, port: int) -> str:
    """The base64 initial response of XOAUTH2 or OAUTHBEARER (RFC 7628), built
    here independently of the library."""
    if mechanism == "XOAUTH2":
        raw = f"user={user}\x01auth=Bearer {token}\x01\x01"
    else:
        raw = f"n,a={user},\x01host=127.0.0.1\x01port={port}\x01auth=Bearer {token}\x01\x01"
    return b64(raw.encode())


@dataclass
class RawAuth:
    """What an independent client (smtplib) saw: each reply to the AUTH
    exchange, the decoded 334 JSON if there was one, and whether a message it
    then sent was accepted."""
    replies: list[tuple[int, str]]
    challenge: dict[str, Any] | None

    @property
    def final(self) -> tuple[int, str]:
        return self.replies[-1]

    def shown(self) -> str:
        return " / ".join(f"{c} {t}".rstrip() for c, t in self.replies)


def raw_auth(h: PostfixHarness, service: str, mechanism: str, user: str, token: str, *, initial: bool = True,
             message: bytes | None = None) -> RawAuth:
    """AUTH by hand with smtplib (STARTTLS first): the initial response on
    the AUTH line, or (initial=False) after the server's empty 334; a 334
    carrying JSON is answered as RFC 7628 says (%x01 for OAUTHBEARER, an empty
    line for XOAUTH2).  With message, sends it after a 235."""
    import smtplib

    port = h.ports[service]
    blob = sasl_blob(mechanism, user, token, port)
    replies: list[tuple[int, str]] = []
    challenge = None
    s = smtplib.SMTP("127.0.0.1", port, timeout=30)
    try:
        s.starttls(context=ssl.create_default_context(cafile=h.ca_file))
        s.ehlo("client.corp.example")
        if initial:
            code, text = s.docmd("AUTH", f"{mechanism} {blob}")
        else:
            code, text = s.docmd("AUTH", mechanism)
            replies.append((code, text.decode()))
            if code != 334:
                return RawAuth(replies, None)
            code, text = s.docmd(blob)
        replies.append((code, text.decode()))
        if code == 334 and text:
            challenge = json.loads(base64.b64decode(text))
            code, text = s.docmd("AQ==" if mechanism == "OAUTHBEARER" else "")
            replies.append((code, text.decode()))
        if code == 235 and message is not None:
            s.sendmail(user, ["bob@partner.example"], message)
        s.quit()
    finally:
        s.close()
    return RawAuth(replies, challenge)


def msal_app(endpoint: TokenEndpoint, app: App, secret: str | None = None) -> Any:
    """A real MSAL confidential client for app against the local endpoint
    (the test CA given to MSAL's requests session, not to the whole process)."""
    import msal
    import requests

    http = requests.Session()
    # requests prefers REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE from the environment
    # over Session.verify unless trust_env is off
    http.trust_env = False
    http.verify = endpoint.ca_file
    return msal.ConfidentialClientApplication(
        app.client_id, client_credential=secret if secret is not None else app.secret,
        authority=f"{endpoint.authority}/{endpoint.tenant}", validate_authority=False, instance_discovery=False,
        http_client=http)


class OAuthHarness(PostfixHarness):
    """harness.py's Postfix (its submission services: STARTTLS, AUTH after
    TLS) with a Dovecot offering LOGIN XOAUTH2 OAUTHBEARER that validates the
    TokenEndpoint's JWTs locally, and the token endpoint itself."""

    def __init__(self) -> None:
        super().__init__()
        # submission with Postfix's SASL response limit raised from 12288 to
        # 64 KiB, to reach Dovecot's own limit on a token's size
        self.ports["submission_big"] = free_port()
        self.endpoint = TokenEndpoint()
        self.issuer = self.endpoint.issuer

    def _configure(self) -> None:
        super()._configure()
        d = self.dir
        # each mailbox may send as itself only (the SASL user is the address)
        mailboxes = [a.mailbox for a in APPS.values()] + [BASIC_ACCOUNT[0]]
        self._write("postfix/sender_login", "".join(f"/^{re.escape(m)}$/ {m}\n" for m in mailboxes))
        with open(d / "postfix" / "master.cf", "a") as f:
            f.write(f"127.0.0.1:{self.ports['submission_big']} inet n - n - - smtpd -o syslog_name=submission_big "
                    "-o smtpd_sasl_auth_enable=yes -o smtpd_tls_security_level=encrypt "
                    "-o smtpd_sasl_response_limit=65536 "
                    "-o smtpd_sender_restrictions=reject_authenticated_sender_login_mismatch,"
                    "permit_sasl_authenticated,reject -o smtpd_delay_reject=no\n")
        users = self._write("dovecot/users", f"{BASIC_ACCOUNT[0]}:{{PLAIN}}{BASIC_ACCOUNT[1]}::::::\n")
        # the validation keys: shared/<azp>/<alg>/<kid>, one per application (azp is its client id)
        for app in APPS.values():
            self._write(f"dovecot/keys/{app.client_id}/RS256/{self.issuer.kid}", self.issuer.public_pem())
        oauth2 = self._write("dovecot/oauth2.conf.ext", f"""\
introspection_mode = local
local_validation_key_dict = fs:posix:prefix={d}/dovecot/keys/
issuers = {self.issuer.iss}
client_id = {EXCHANGE}
username_attribute = email
username_format = %Lu
active_attribute = roles
active_value = {SEND_AS_APP}
openid_configuration_url = {self.endpoint.base_url}/{self.endpoint.tenant}/v2.0/.well-known/openid-configuration
""")
        self._write("dovecot/dovecot.conf", dovecot_conf(d, "login xoauth2 oauthbearer", """\
auth_username_format = %Lu
auth_failure_delay = 0
auth_verbose = yes
""", f"""\
passdb {{
  driver = passwd-file
  mechanisms = login plain
  args = scheme=PLAIN {users}
}}
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {oauth2}
}}
""", penalty=False))

    def start(self) -> OAuthHarness:
        self.endpoint.start()
        try:
            super().start()
        except BaseException:
            self.endpoint.stop()
            raise
        return self

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.endpoint.stop()


def bad_tokens(h: OAuthHarness) -> dict[str, tuple[str, str, str]]:
    """kind -> (token, SASL user, what Dovecot's log says of it)."""
    iss = h.issuer
    mailer = APPS["mailer"]
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = time.time()
    wrong_iss = iss.claims(mailer)
    wrong_iss["iss"] = "https://login.example.net/other-tenant/v2.0"
    return {
        "bad signature": (iss.sign(iss.claims(mailer), key=other_key), mailer.mailbox, "Bad signature"),
        "expired": (iss.token(mailer, issued=now - 7200, lifetime=3600), mailer.mailbox, "Token has expired"),
        "wrong audience": (iss.token(mailer, audience="https://graph.microsoft.com"), mailer.mailbox,
                           "client_id not found in aud field"),
        "wrong issuer": (iss.sign(wrong_iss), mailer.mailbox, "Issuer 'https://login.example.net/other-tenant/v2.0' "
                         "is not allowed"),
        "another mailbox": (iss.token(mailer), BASIC_ACCOUNT[0],
                            f"Username '{BASIC_ACCOUNT[0]}' did not match '{mailer.mailbox}'"),
        "without SMTP.SendAsApp": (iss.token(APPS["noperm"]), APPS["noperm"].mailbox, "Provided token is not valid"),
    }


BAD_KINDS = ["bad signature", "expired", "wrong audience", "wrong issuer", "another mailbox",
             "without SMTP.SendAsApp"]
