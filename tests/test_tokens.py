"""Token sources (mailexpress.auth.tokens) with real MSAL and azure-identity
against a small local HTTPS OpenID endpoint shaped like Entra ID's
(discovery document + token endpoint, AADSTS error bodies), and the plain
callable / get_token(scope) providers.  The endpoint hands out the
emulator's own tokens, so the whole path -- MSAL, XOAUTH2, the emulator's
token check -- runs for real."""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import ssl
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

import mailexpress as mx
from mailexpress.auth import tokens
from mailexpress.testing import ConnectorEmulator, User

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT_ID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
SECRET = "Zx8Q~client-secret-value-never-shown"
MAILBOX = "sender@corp.example"
SCOPE = "https://outlook.office365.com/.default"


class TokenEndpoint:
    """Entra ID reduced to the client-credentials flow, over HTTPS on
    127.0.0.1.  ``issue(scope)`` makes the access tokens; ``token_requests``
    counts POSTs to the token endpoint."""

    def __init__(self, ca: trustme.CA, issue: Callable[[str], str], *, expires_in: int = 3599,
                 certificate: x509.Certificate | None = None) -> None:
        self.issue = issue
        self.expires_in = expires_in
        self.certificate = certificate
        self.token_requests = 0
        self.discovery_requests = 0
        self.bodies: list[str] = []
        self.assertions: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                parts = self.path.split("?")[0].strip("/").split("/")
                with endpoint.lock:
                    endpoint.discovery_requests += 1
                if parts[1:] == ["v2.0", ".well-known", "openid-configuration"] and parts[0] == TENANT:
                    base = f"https://127.0.0.1:{endpoint.port}/{TENANT}"
                    self.reply(200, {
                        "issuer": f"https://127.0.0.1:{endpoint.port}/{TENANT}/v2.0",
                        "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                        "token_endpoint": f"{base}/oauth2/v2.0/token",
                        "jwks_uri": f"{base}/discovery/v2.0/keys",
                        "response_types_supported": ["code", "token"],
                        "subject_types_supported": ["pairwise"],
                        "id_token_signing_alg_values_supported": ["RS256"],
                    })
                else:
                    self.reply(400, {"error": "invalid_tenant", "error_codes": [90002],
                                     "error_description": f"AADSTS90002: Tenant '{parts[0]}' not found. "
                                     "Check to make sure you have the correct tenant ID."})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length).decode()
                form = dict(urllib.parse.parse_qsl(body))
                with endpoint.lock:
                    endpoint.token_requests += 1
                    endpoint.bodies.append(body)
                if self.path.split("?")[0] != f"/{TENANT}/oauth2/v2.0/token":
                    self.reply(404, {"error": "not_found"})
                    return
                if form.get("grant_type") != "client_credentials" or form.get("scope") != SCOPE:
                    self.reply(400, {"error": "invalid_scope", "error_codes": [70011],
                                     "error_description": "AADSTS70011: The provided value for scope is not valid."})
                    return
                if form.get("client_id") != CLIENT_ID:
                    self.reply(400, {"error": "unauthorized_client", "error_codes": [700016],
                                     "error_description": f"AADSTS700016: Application with identifier "
                                     f"'{form.get('client_id')}' was not found in the directory '{TENANT}'."})
                    return
                if not endpoint.client_ok(form):
                    code, text = ((700027, "AADSTS700027: Client assertion failed signature validation.")
                                  if "client_assertion" in form else
                                  (7000215, "AADSTS7000215: Invalid client secret provided. Ensure the secret "
                                   "being sent in the request is the client secret value, not the client "
                                   "secret ID, for a secret added to app '" + CLIENT_ID + "'."))
                    self.reply(401, {"error": "invalid_client", "error_codes": [code],
                                     "error_description": text + "\r\nTrace ID: " + str(uuid.uuid4())})
                    return
                self.reply(200, {"token_type": "Bearer", "expires_in": endpoint.expires_in,
                                 "ext_expires_in": endpoint.expires_in,
                                 "access_token": endpoint.issue(form["scope"])})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(ctx)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def authority(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def client_ok(self, form: dict[str, str]) -> bool:
        if "client_assertion" in form:
            return self.assertion_ok(form)
        return form.get("client_secret") == SECRET

    def assertion_ok(self, form: dict[str, str]) -> bool:
        """The client's JWT signed with the registered certificate's key (RFC 7523)."""
        if self.certificate is None:
            return False
        assertion = form["client_assertion"]
        header = jwt.get_unverified_header(assertion)
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        x5t = base64.urlsafe_b64encode(hashlib.sha1(der).digest()).rstrip(b"=").decode()
        x5t256 = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
        # MSAL pads its base64url thumbprint; Entra ID takes it either way
        if (str(header.get("x5t", "")).rstrip("=") != x5t
                and str(header.get("x5t#S256", "")).rstrip("=") != x5t256):
            return False
        try:
            claims = jwt.decode(assertion, self.certificate.public_key(),  # type: ignore[arg-type]
                                algorithms=["RS256", "PS256"],
                                audience=f"https://127.0.0.1:{self.port}/{TENANT}/oauth2/v2.0/token")
        except jwt.InvalidTokenError:
            return False
        self.assertions.append({"header": header, "claims": claims})
        return claims.get("iss") == CLIENT_ID and claims.get("sub") == CLIENT_ID

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_bundle(ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(path))     # MSAL's HTTP goes through requests
    return str(path)


@pytest.fixture(autouse=True)
def fresh_sources() -> Iterator[None]:
    """Each test starts with no cached MSAL application or token."""
    tokens._MSAL_SOURCES.clear()
    yield
    tokens._MSAL_SOURCES.clear()


@pytest.fixture
def online() -> Iterator[ConnectorEmulator]:
    user = User("sender", "unused-Passw0rd", MAILBOX, rights="self")
    em = ConnectorEmulator.preset("exchange_online", users=[user]).start()
    yield em
    em.stop()


@pytest.fixture
def endpoint_factory(ca: trustme.CA, ca_bundle: str) -> Iterator[Callable[..., TokenEndpoint]]:
    made: list[TokenEndpoint] = []

    def make(issue: Callable[[str], str] | None = None, **kw: Any) -> TokenEndpoint:
        ep = TokenEndpoint(ca, issue or (lambda scope: "opaque-token-" + uuid.uuid4().hex), **kw)
        made.append(ep)
        return ep

    yield make
    for ep in made:
        ep.close()


def oauth_settings(ep: TokenEndpoint, **extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"oauth_tenant": TENANT, "oauth_client_id": CLIENT_ID,
                              "oauth_authority": ep.authority}
    values.update(extra)
    return values


def offline_config(ep: TokenEndpoint, **extra: Any) -> mx.Config:
    """A config whose mail server is never contacted (token tests only)."""
    return mx.load_config(env={"APP_SECRET": SECRET}, host="mail.invalid", username=MAILBOX,
                          **oauth_settings(ep, **{"oauth_client_secret_env": "APP_SECRET", **extra}))


# -- MSAL client credentials with a secret ----------------------------------------

def test_msal_gets_a_token_once_and_serves_it_from_the_cache(endpoint_factory):
    ep = endpoint_factory()
    cfg = offline_config(ep)
    source = tokens.source_for(cfg)
    assert isinstance(source, tokens.MsalSource)
    first = source.get()
    assert first.token.startswith("opaque-token-") and first.expires_in() > 3000
    # another connection, another equal config: the same source, no new request
    again = tokens.source_for(mx.load_config(env={"APP_SECRET": SECRET}, host="mail.invalid",
                                             username=MAILBOX, **oauth_settings(
                                                 ep, oauth_client_secret_env="APP_SECRET")))
    assert again is source and again.get().token == first.token
    assert ep.token_requests == 1
    # what MSAL sent: the client-credentials grant with our scope and secret
    form = dict(urllib.parse.parse_qsl(ep.bodies[0]))
    assert form["grant_type"] == "client_credentials" and form["scope"] == SCOPE
    assert form["client_secret"] == SECRET


def test_a_token_near_expiry_is_renewed(endpoint_factory, monkeypatch):
    ep = endpoint_factory(expires_in=600)
    source = tokens.source_for(offline_config(ep))
    assert source is not None
    first = source.get()
    assert ep.token_requests == 1
    clock = time.time() + 301          # 299 s left: inside the 300 s margin
    monkeypatch.setattr(tokens.time, "time", lambda: clock)
    second = source.get()
    # MSAL's own cache would still hand out the old token: ours asks anew
    assert second.token != first.token or ep.token_requests == 2


def test_a_changed_secret_is_a_new_source(endpoint_factory):
    ep = endpoint_factory()
    a = tokens.source_for(offline_config(ep))
    b = tokens.source_for(mx.load_config(env={"S2": "other-secret"}, host="mail.invalid", username=MAILBOX,
                                         **oauth_settings(ep, oauth_client_secret_env="S2")))
    assert a is not b


@pytest.mark.parametrize("change, code, words", [
    ({"secret": "wrong-secret-value"}, "AADSTS7000215", "use the secret's Value"),
    ({"oauth_client_id": "99999999-0000-0000-0000-000000000000"}, "AADSTS700016", "oauth_client_id"),
    ({"oauth_tenant": "no-such-tenant.example"}, "AADSTS90002", "oauth_tenant"),
    ({"oauth_scope": "https://graph.microsoft.com/.default"}, "AADSTS70011", "oauth_scope"),
])
def test_token_endpoint_errors_carry_the_provider_code_and_the_fix(endpoint_factory, caplog, change, code, words):
    caplog.set_level(logging.DEBUG)
    ep = endpoint_factory()
    secret = change.pop("secret", SECRET)
    cfg = mx.load_config(env={"APP_SECRET": secret}, host="mail.invalid", username=MAILBOX,
                         **oauth_settings(ep, oauth_client_secret_env="APP_SECRET", **change))
    source = tokens.source_for(cfg)
    assert source is not None
    with pytest.raises(mx.AuthError) as info:
        source.get()
    exc = info.value
    assert exc.provider_code == code and code in str(exc) and words in str(exc)
    assert exc.stage is mx.Stage.AUTH and "MSAL" in str(exc) and "nothing was sent" in str(exc)
    # not a traceback from inside MSAL: no cause, no context shown
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)
    for text in (str(exc), repr(exc), repr(exc.args), caplog.text, repr(cfg), str(cfg.to_dict())):
        assert secret not in text and SECRET not in text


def test_unreachable_authority_is_an_auth_error(ca_bundle):
    cfg = mx.load_config(env={"APP_SECRET": SECRET}, host="mail.invalid", username=MAILBOX,
                         oauth_tenant=TENANT, oauth_client_id=CLIENT_ID, oauth_client_secret_env="APP_SECRET",
                         oauth_authority="https://127.0.0.1:1")
    source = tokens.source_for(cfg)
    assert source is not None
    with pytest.raises(mx.AuthError, match="cannot reach https://127.0.0.1:1") as info:
        source.get()
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert SECRET not in str(info.value)


# -- MSAL with a certificate ----------------------------------------------------

def make_certificate(tmp_path: Path, *, key_beside: bool, days: int = 365) -> tuple[Path, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailexpress-app")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=2))
            .not_valid_after(now + timedelta(days=days)).sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    path = tmp_path / f"app-{uuid.uuid4().hex[:6]}.pem"
    if key_beside:
        path.write_bytes(cert_pem)
        path.with_suffix(".key").write_bytes(key_pem)
    else:
        path.write_bytes(key_pem + cert_pem)
    os.chmod(path, 0o600)
    return path, cert


@pytest.mark.parametrize("key_beside", [False, True])
def test_certificate_credential_signs_a_client_assertion(endpoint_factory, tmp_path, key_beside):
    path, cert = make_certificate(tmp_path, key_beside=key_beside)
    ep = endpoint_factory(certificate=cert)
    cfg = mx.load_config(env={}, host="mail.invalid", username=MAILBOX,
                         **oauth_settings(ep, oauth_certificate_file=str(path)))
    source = tokens.source_for(cfg)
    assert isinstance(source, tokens.MsalSource)
    assert source.get().token.startswith("opaque-token-")
    # the endpoint verified the JWT with the certificate's key; the thumbprint is SHA-1 of the DER
    assert len(ep.assertions) == 1
    assert source.thumbprint == cert.fingerprint(hashes.SHA1()).hex().upper()
    assert "client_secret" not in dict(urllib.parse.parse_qsl(ep.bodies[0]))


def test_a_certificate_the_app_does_not_know_names_its_thumbprint(endpoint_factory, tmp_path):
    path, _cert = make_certificate(tmp_path, key_beside=False)
    _other_path, other = make_certificate(tmp_path, key_beside=False)
    ep = endpoint_factory(certificate=other)
    source = tokens.source_for(mx.load_config(env={}, host="mail.invalid", username=MAILBOX,
                                              **oauth_settings(ep, oauth_certificate_file=str(path))))
    assert source is not None
    with pytest.raises(mx.AuthError) as info:
        source.get()
    assert info.value.provider_code == "AADSTS700027"
    assert isinstance(source, tokens.MsalSource) and source.thumbprint and source.thumbprint in str(info.value)


def test_an_expired_certificate_is_refused_before_asking(endpoint_factory, tmp_path):
    path, cert = make_certificate(tmp_path, key_beside=True, days=-1)
    ep = endpoint_factory(certificate=cert)
    source = tokens.source_for(mx.load_config(env={}, host="mail.invalid", username=MAILBOX,
                                              **oauth_settings(ep, oauth_certificate_file=str(path))))
    assert source is not None
    with pytest.raises(mx.AuthError, match="expired"):
        source.get()
    assert ep.token_requests == 0


# -- the whole path: MSAL -> XOAUTH2 -> the emulator ----------------------------

def test_msal_token_authenticates_with_xoauth2_end_to_end(endpoint_factory, online, caplog):
    caplog.set_level(logging.DEBUG)
    ep = endpoint_factory(issue=lambda scope: online.issue_token(MAILBOX))
    cfg = online.config(username=MAILBOX, password=None, from_address=MAILBOX,
                        **oauth_settings(ep, oauth_client_secret=SECRET))
    res = mx.send_as(cfg, MAILBOX, to="bob@partner.example", subject="oauth", body="hello")
    assert res.ok and online.messages[-1].mail_from == MAILBOX
    client = [t for _ms, d, t in res.transcript if d == "C"]
    assert "AUTH XOAUTH2 <token redacted>" in client and not any("LOGIN" in t for t in client)
    with mx.connect(cfg) as s:
        assert s.auth_result is not None and s.auth_result.mechanism == "XOAUTH2"
    assert ep.token_requests == 1          # the second connection used the cached token
    assert SECRET not in caplog.text


def test_bulk_run_with_forced_reconnects_asks_the_endpoint_once(endpoint_factory, ca_bundle):
    user = User("sender", "unused-Passw0rd", MAILBOX, rights="self")
    em = ConnectorEmulator.preset("exchange_online", users=[user], max_messages_per_connection=100).start()
    try:
        ep = endpoint_factory(issue=lambda scope: em.issue_token(MAILBOX))
        cfg = em.config(username=MAILBOX, password=None, from_address=MAILBOX,
                        **oauth_settings(ep, oauth_client_secret=SECRET))
        messages = [{"to": "bob@partner.example", "subject": f"m{i}", "body": "x"} for i in range(1000)]
        result = mx.send_many(cfg, messages, reconnects=20)
        assert len(result.sent) == 1000 and result.connections == 10
        assert len(em.messages) == 1000
        assert ep.token_requests == 1
    finally:
        em.stop()


# -- azure-identity: a real credential against the same endpoint ------------------

def test_azure_identity_credential_as_token_provider(endpoint_factory, online):
    from azure.identity import ClientSecretCredential
    ep = endpoint_factory(issue=lambda scope: online.issue_token(MAILBOX))
    cred = ClientSecretCredential(TENANT, CLIENT_ID, SECRET, authority=ep.authority,
                                  disable_instance_discovery=True)
    cfg = online.config(username=MAILBOX, password=None, from_address=MAILBOX, token_provider=cred)
    res = mx.send_as(cfg, MAILBOX, to="bob@partner.example", subject="azure", body="x")
    assert res.ok and ep.token_requests == 1
    bad = ClientSecretCredential(TENANT, CLIENT_ID, "not-the-secret", authority=ep.authority,
                                 disable_instance_discovery=True)
    with pytest.raises(mx.AuthError) as info:
        mx.send_as(cfg, MAILBOX, to="bob@partner.example", subject="azure", body="x", token_provider=bad)
    assert info.value.provider_code == "AADSTS7000215" and "not-the-secret" not in str(info.value)


# -- plain providers ------------------------------------------------------------

def test_callable_with_expiry_is_cached_until_the_margin():
    calls: list[float] = []

    def provider() -> tuple[str, float]:
        calls.append(time.time())
        return f"tok{len(calls)}", time.time() + 3600

    cfg = mx.load_config(env={}, host="h", username=MAILBOX, token_provider=provider)
    source = tokens.source_for(cfg)
    assert source is not None and source is tokens.source_for(cfg.replace(port=2525))
    assert source.get().token == "tok1" and source.get().token == "tok1" and len(calls) == 1


def test_callable_with_short_lived_tokens_is_asked_each_time():
    n = iter(range(100))

    def provider() -> tuple[str, datetime]:
        return f"t{next(n)}", datetime.now(timezone.utc) + timedelta(seconds=60)

    source = tokens.CallableSource(provider)
    assert source.get().token == "t0" and source.get().token == "t1"


def test_bare_string_jwt_expiry_is_read():
    exp = int(time.time()) - 10
    payload = base64.urlsafe_b64encode(json.dumps({"exp": exp}).encode()).rstrip(b"=").decode()
    expired = f"eyJhbGciOiJIUzI1NiJ9.{payload}.c2ln"
    with pytest.raises(mx.AuthError, match="expired"):
        tokens.CallableSource(lambda: expired).get()


def test_get_token_credential_is_used_with_the_scope():
    seen: list[str] = []

    class Credential:
        def get_token(self, *scopes: str, **kw: Any) -> Any:
            from azure.core.credentials import AccessToken
            seen.extend(scopes)
            return AccessToken("cred-token", int(time.time()) + 3600)

    cfg = mx.load_config(env={}, host="h", username=MAILBOX, token_provider=Credential(),
                         oauth_scope="https://outlook.office365.us/.default")
    source = tokens.source_for(cfg)
    assert isinstance(source, tokens.CredentialSource)
    assert source.get().token == "cred-token" and seen == ["https://outlook.office365.us/.default"]


def test_access_token_repr_hides_the_token():
    tok = tokens.AccessToken("very-secret-token", 123.0)
    assert "very-secret-token" not in repr(tok) and "very-secret-token" not in str(tok)


def test_threads_share_one_token_request(endpoint_factory):
    ep = endpoint_factory()
    source = tokens.source_for(offline_config(ep))
    assert source is not None
    got: list[str] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        got.append(source.get().token)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(got) == 8 and len(set(got)) == 1 and ep.token_requests == 1
