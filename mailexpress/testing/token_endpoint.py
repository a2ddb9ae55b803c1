"""A token endpoint shaped like Microsoft Entra ID's v2.0 endpoints, on
127.0.0.1 over HTTPS (the emulator's test CA), so real MSAL
(``ConfidentialClientApplication``, the ``oauth_*`` settings) gets the
emulator's tokens offline:

  GET  /<tenant>/v2.0/.well-known/openid-configuration
  GET  /<tenant>/discovery/v2.0/keys   (when the issuer publishes keys)
  POST /<tenant>/oauth2/v2.0/token     (grant_type=client_credentials)

Refusals are written the way Entra writes them (``error``,
``error_description`` starting ``AADSTS<code>:``, ``error_codes``):
AADSTS90002 unknown tenant, AADSTS700016 unknown application,
AADSTS7000215 wrong client secret, AADSTS1002012 a scope without
``/.default``.  Standard library only.  The emulator's tenant has one app
and HS256 tokens; the interop suite serves several apps and RS256 tokens
that Dovecot checks through the same class (tests/interop/oauth_harness.py).
"""
from __future__ import annotations

import json
import secrets
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .certs import test_certificates

__all__ = ["EntraTokenEndpoint"]


def _error(code: int, error: str, text: str) -> dict[str, Any]:
    now = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    return {"error": error, "error_description": f"AADSTS{code}: {text}\r\nTrace ID: {uuid.uuid4()}\r\n"
            f"Correlation ID: {uuid.uuid4()}\r\nTimestamp: {now}", "error_codes": [code], "timestamp": now,
            "trace_id": str(uuid.uuid4()), "correlation_id": str(uuid.uuid4())}


class EntraTokenEndpoint:
    """The identity provider of one tenant: its app registrations (``apps``,
    client id -> client secret) get app-only tokens from
    ``issue(client_id, audience, expires_in)``.  ``issuer_url`` is the
    ``issuer`` of the discovery document (Entra's own by default); ``jwks``,
    when given, publishes the signing keys.  ``port`` 0 picks a free one at
    start.  ``token_requests`` counts the tokens handed out
    (``tokens_by_client`` per client id), ``discovery_requests`` the
    discovery documents, ``refused`` lists the AADSTS codes answered."""

    def __init__(self, *, tenant_id: str, apps: Mapping[str, str], issue: Callable[[str, str, int], str],
                 issuer_url: str | None = None, jwks: Callable[[], dict[str, Any]] | None = None,
                 expires_in: int = 3599, port: int = 0) -> None:
        self.tenant_id = tenant_id
        self.apps = dict(apps)
        self._issue = issue
        self.issuer_url = issuer_url or f"https://login.microsoftonline.com/{tenant_id}/v2.0"
        self._jwks = jwks
        self.expires_in = expires_in
        self.port = port
        self.token_requests = 0
        self.tokens_by_client: Counter[str] = Counter()
        self.discovery_requests = 0
        self.refused: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"EntraTokenEndpoint(authority={self.authority!r}, apps={len(self.apps)}, secrets='<redacted>')"

    @property
    def authority(self) -> str:
        """What ``oauth_authority`` is set to (the tenant goes in ``oauth_tenant``)."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def client_secret(self) -> str:
        """The secret of the one app registered (the emulator's tenant)."""
        if len(self.apps) != 1:
            raise ValueError(f"{len(self.apps)} apps are registered: look the secret up in apps")
        return next(iter(self.apps.values()))

    @property
    def ca_file(self) -> str:
        return test_certificates().ca_file

    def openid_configuration(self) -> dict[str, Any]:
        t = f"{self.authority}/{self.tenant_id}"
        return {"issuer": self.issuer_url,
                "token_endpoint": f"{t}/oauth2/v2.0/token", "authorization_endpoint": f"{t}/oauth2/v2.0/authorize",
                "jwks_uri": f"{t}/discovery/v2.0/keys",
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt",
                                                          "client_secret_basic"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "subject_types_supported": ["pairwise"], "id_token_signing_alg_values_supported": ["RS256"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"], "tenant_region_scope": "EU"}

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """The answer to one token request."""
        if form.get("grant_type") != "client_credentials":
            return 400, _error(70003, "unsupported_grant_type", "The app requested an unsupported grant type.")
        client_id = form.get("client_id", "")
        secret = self.apps.get(client_id)
        if secret is None:
            return 400, _error(700016, "unauthorized_client", f"Application with identifier "
                               f"'{form.get('client_id')}' was not found in the directory "
                               f"'{self.tenant_id}'.")
        given = form.get("client_secret", "")
        if not secrets.compare_digest(given.encode(), secret.encode()):
            return 401, _error(7000215, "invalid_client", "Invalid client secret provided. Ensure the secret "
                               "being sent in the request is the client secret value, not the client secret ID, "
                               f"for a secret added to app '{client_id}'.")
        scopes = form.get("scope", "").split()
        resource = next((s[:-len("/.default")] for s in scopes if s.endswith("/.default")), None)
        if resource is None:
            return 400, _error(1002012, "invalid_scope", f"The provided value for scope {form.get('scope')} is "
                               "not valid. Client credential flows must have a scope value with /.default "
                               "suffixed to the resource identifier (application ID URI).")
        with self._lock:
            self.token_requests += 1
            self.tokens_by_client[client_id] += 1
        return 200, {"token_type": "Bearer", "expires_in": self.expires_in, "ext_expires_in": self.expires_in,
                     "access_token": self._issue(client_id, resource, self.expires_in)}

    def reset_counts(self) -> None:
        with self._lock:
            self.token_requests = 0
            self.tokens_by_client.clear()
            self.discovery_requests = 0
            self.refused.clear()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self
        prefix = f"/{self.tenant_id}"

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                if status != 200 and "error_codes" in body:
                    with endpoint._lock:
                        endpoint.refused.append(f"AADSTS{body['error_codes'][0]}")
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store, no-cache")
                self.end_headers()
                self.wfile.write(data)

            def _tenant(self) -> bool:
                if self.path.startswith(prefix + "/"):
                    return True
                tenant = self.path.split("/")[1] if self.path.count("/") > 1 else ""
                self._send(400, _error(90002, "invalid_tenant", f"Tenant '{tenant}' not found. Check to make "
                                       "sure you have the correct tenant ID and are signing into the correct "
                                       "cloud."))
                return False

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if not self._tenant():
                    return
                path = self.path.split("?")[0]
                if path == f"{prefix}/v2.0/.well-known/openid-configuration":
                    with endpoint._lock:
                        endpoint.discovery_requests += 1
                    self._send(200, endpoint.openid_configuration())
                elif path == f"{prefix}/discovery/v2.0/keys" and endpoint._jwks is not None:
                    self._send(200, endpoint._jwks())
                else:
                    self._send(404, {"error": "not_found"})

            def do_POST(self) -> None:  # noqa: N802
                length = min(int(self.headers.get("Content-Length") or 0), 1 << 20)
                body = self.rfile.read(length).decode("utf-8", "replace")
                if not self._tenant():
                    return
                if self.path.split("?")[0] != f"{prefix}/oauth2/v2.0/token":
                    self._send(404, {"error": "not_found"})
                    return
                self._send(*endpoint.token(dict(urllib.parse.parse_qsl(body))))

        return Handler

    def start(self) -> EntraTokenEndpoint:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        server.daemon_threads = True
        server.socket = test_certificates().server_context("valid").wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="emulator-token-endpoint", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
