"""Configuration: the fields of a mail-server settings page, from a TOML file,
the environment and keyword arguments.

Sources, later wins: defaults < TOML file < environment (``MAILEXPRESS_*``)
< keyword arguments.  Unknown keys and bad values raise `ConfigError`
naming the key, the value, where it came from and what is allowed.  The
password is held in a `Secret`, which never shows in ``repr``, ``str``,
logs or exceptions.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import html
import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from typing import Any

from . import _core
from .errors import ConfigError
from .limits import Limits

__all__ = ["Config", "Secret", "load_config", "FIELDS", "ENV_PREFIX"]

ENV_PREFIX = "MAILEXPRESS_"

SECURITY_MODES = ("starttls", "ssl", "none")
DEFAULT_PORTS = {"starttls": 587, "ssl": 465, "none": 25}
SERVER_FAMILIES = (
    "exchange2003", "exchange2007", "exchange2010", "exchange2013",
    "exchange2016", "exchange2019", "exchange_online", "postfix", "exim",
    "other",
)
TIMEOUT_STAGES = (
    "connect", "banner", "tls", "ehlo", "starttls", "auth", "mail", "rcpt",
    "data", "data_block", "end_of_data", "command", "quit",
)
AUTH_MECHANISMS = ("XOAUTH2", "OAUTHBEARER", "GSSAPI", "NTLM", "LOGIN", "PLAIN")
#: auth_mechanisms = ["automatic"]: the order above, each only when its
#: credentials are there (a token source; a Kerberos ticket; a password)
AUTOMATIC = "automatic"
DEFAULT_OAUTH_SCOPE = "https://outlook.office365.com/.default"
DEFAULT_OAUTH_AUTHORITY = "https://login.microsoftonline.com"


class Secret:
    """A string that does not show itself.  ``reveal()`` gives it back."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret holds a str")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> Any:
        raise TypeError("a Secret is not pickled; pass the password again")


@dataclass(frozen=True)
class FieldInfo:
    name: str
    kind: str          # str, int, bool, float, path, list, timeouts, secret, object, limits
    default: Any
    doc: str
    choices: tuple[str, ...] = ()


# The configuration reference: one entry per key, in the order of a
# settings page.  docs/configuration.md is generated from this table.
FIELDS: tuple[FieldInfo, ...] = (
    FieldInfo("host", "str", None, "Mail server host name or address (required)."),
    FieldInfo("port", "int", None, "TCP port; default 587 for starttls, 465 for ssl, 25 for none."),
    FieldInfo("security", "str", "starttls",
              "'starttls' (port 587, upgrade with STARTTLS), 'ssl' (implicit TLS, port 465) "
              "or 'none' (no TLS).", SECURITY_MODES),
    FieldInfo("use_auth", "bool", True, "Authenticate (SMTP AUTH): with a token when one is configured "
              "(oauth_* or token_provider), Kerberos or NTLM, else the password (LOGIN, PLAIN)."),
    FieldInfo("username", "str", None, "Account name for authentication (e.g. CORP\\svc-mailer or svc-mailer@corp.example); "
              "with OAuth the mailbox (XOAUTH2 user=)."),
    FieldInfo("password", "secret", None, "Password.  Prefer password_env or password_file."),
    FieldInfo("password_env", "str", None, "Name of an environment variable holding the password."),
    FieldInfo("password_file", "path", None, "File whose first line is the password."),
    FieldInfo("from_address", "str", None, "Default From address (the sender to impersonate)."),
    FieldInfo("reply_to_address", "str", None, "Default Reply-To address."),
    FieldInfo("verify", "bool", True, "Verify the server certificate and host name."),
    FieldInfo("ca_file", "path", None, "PEM file of trusted CAs instead of the system store."),
    FieldInfo("client_cert", "path", None, "PEM client certificate (chain) for TLS."),
    FieldInfo("client_key", "path", None, "PEM key of client_cert (when not inside it)."),
    FieldInfo("min_tls_version", "str", "1.2", "Lowest TLS version accepted: '1.2' or '1.3'.", ("1.2", "1.3")),
    FieldInfo("server_name", "str", None, "Name to verify in the certificate (and send as SNI) when it differs from host."),
    FieldInfo("ehlo_name", "str", None, "Name sent in EHLO; default this machine's host name."),
    FieldInfo("allow_insecure_auth", "bool", False, "Allow sending credentials without TLS (trusted networks only)."),
    FieldInfo("auth_mechanisms", "list", [AUTOMATIC],
              "'automatic': XOAUTH2/OAUTHBEARER when a token source is configured, GSSAPI when a "
              "Kerberos ticket is available, NTLM, LOGIN, PLAIN (the first the server offers).  "
              "A list of " + ", ".join(AUTH_MECHANISMS) + " pins the allowed set and its order.",
              (AUTOMATIC, *AUTH_MECHANISMS)),
    FieldInfo("oauth_tenant", "str", None,
              "Entra ID tenant (Directory (tenant) ID, or a verified domain) for the OAuth "
              "client-credentials flow; needs oauth_client_id."),
    FieldInfo("oauth_client_id", "str", None,
              "Application (client) ID of the app registration holding SMTP.SendAsApp; needs "
              "oauth_tenant and one of oauth_client_secret_env, oauth_client_secret_file, "
              "oauth_certificate_file.  Extra: mailexpress[oauth]."),
    FieldInfo("oauth_client_secret", "secret", None,
              "Client secret (its Value, not its ID).  Prefer oauth_client_secret_env or "
              "oauth_client_secret_file; refused inline in a TOML file others may read."),
    FieldInfo("oauth_client_secret_env", "str", None, "Name of an environment variable holding the client secret."),
    FieldInfo("oauth_client_secret_file", "path", None, "File whose first line is the client secret."),
    FieldInfo("oauth_certificate_file", "path", None,
              "PEM certificate registered with the app, its private key inside the file or "
              "beside it (same name, .key), instead of a client secret."),
    FieldInfo("oauth_scope", "str", DEFAULT_OAUTH_SCOPE, "Scope the token is asked for."),
    FieldInfo("oauth_authority", "str", DEFAULT_OAUTH_AUTHORITY,
              "Token authority (https); another cloud's, e.g. https://login.microsoftonline.us."),
    FieldInfo("kerberos_service", "str", "smtp",
              "Service part of the server's Kerberos principal (service/host); Exchange "
              "registers SMTPSVC/<host> on its computer account, Dovecot and Postfix use smtp."),
    FieldInfo("token_provider", "object", None,
              "Keyword argument only: an object with get_token(scope) (an azure.identity "
              "credential) or a callable returning a token str or (token, expires_at)."),
    FieldInfo("timeouts", "timeouts", {}, "Per-stage timeouts in seconds: " + ", ".join(TIMEOUT_STAGES) + "."),
    FieldInfo("limits", "limits", None,
              "Sending limits for mx.send_many (docs/bulk.md): a preset name ('exchange_online', "
              "'exchange_client_frontend', 'exchange_default_frontend', 'opensmtpd') or a table of "
              "messages_per_minute, recipients_per_message, recipients_per_day, connections, "
              "messages_per_connection (with preset = '...' to start from one)."),
    FieldInfo("deadline", "float", None, "Overall limit in seconds for one send_as or test_connector call."),
    FieldInfo("server_family", "str", None, "For advice: " + ", ".join(SERVER_FAMILIES) + ".", SERVER_FAMILIES),
    FieldInfo("connector_name", "str", None, "For advice: the receive connector's name (e.g. 'EX01\\Client Frontend EX01')."),
    FieldInfo("service_account", "str", None, "For advice: the account as Exchange knows it (e.g. 'CORP\\svc-mailer')."),
    FieldInfo("probe_authoritative_sender", "str", None, "Another address in the authoritative domain, for probes."),
    FieldInfo("probe_external_sender", "str", None, "An address outside the organisation, for probes."),
    FieldInfo("probe_recipient", "str", None, "Recipient for probes (no mail is delivered unless deep=True)."),
    FieldInfo("require", "list", [], "Checks that must pass (others only warn)."),
)

_FIELD = {f.name: f for f in FIELDS}
_PASSWORD_KEYS = ("password", "password_env", "password_file")
_CLIENT_SECRET_KEYS = ("oauth_client_secret", "oauth_client_secret_env", "oauth_client_secret_file")
#: values that never show (repr, errors, config show)
_SECRET_FIELDS = ("password", "oauth_client_secret")
#: settings only a keyword argument can give (Python objects)
_KEYWORD_ONLY = ("token_provider",)


def _suggest(key: str, known: Any) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _bad(key: str, value: Any, source: str, allowed: str) -> ConfigError:
    hidden = key in _SECRET_FIELDS
    shown = "<hidden>" if hidden else repr(value)
    exc = ConfigError(f"{key} = {shown} (from {source}): {allowed}")
    exc.key, exc.value, exc.source = key, (None if hidden else value), source
    return exc


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(key: str, value: Any, source: str, from_text: bool) -> Any:
    """Turns one raw value into the field's type, or raises ConfigError."""
    info = _FIELD[key]
    kind = info.kind
    if value is None:
        return None
    if kind == "limits":
        try:
            return Limits.coerce(value.strip() if isinstance(value, str) else value)
        except ConfigError as exc:
            raise _bad(getattr(exc, "key", None) or key, value, source,
                       exc.message.partition(": ")[2] or exc.message) from None
    if kind == "object":
        if not (callable(value) or callable(getattr(value, "get_token", None))):
            raise _bad(key, value, source, "expected an object with get_token(scope) (an "
                       "azure.identity credential) or a callable returning a token")
        return value
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if from_text and isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _bad(key, value, source, "expected true or false")
    if kind == "int":
        if isinstance(value, bool):
            raise _bad(key, value, source, "expected a whole number")
        if isinstance(value, str) and from_text:
            try:
                value = int(value.strip())
            except ValueError:
                raise _bad(key, value, source, "expected a whole number") from None
        if not isinstance(value, int):
            raise _bad(key, value, source, "expected a whole number")
        if key == "port" and not 1 <= value <= 65535:
            raise _bad(key, value, source, "a port is between 1 and 65535")
        return value
    if kind == "float":
        if isinstance(value, str) and from_text:
            try:
                value = float(value.strip())
            except ValueError:
                raise _bad(key, value, source, "expected a number of seconds") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 604800:
            raise _bad(key, value, source, "expected a number of seconds between 0 and 604800")
        return float(value)
    if kind == "secret":
        if isinstance(value, Secret):
            return value
        if not isinstance(value, str):
            raise _bad(key, value, source, "expected a string")
        return Secret(value)
    if kind == "path":
        if not isinstance(value, (str, os.PathLike)):
            raise _bad(key, value, source, "expected a file path")
        return os.fspath(value)
    if kind == "list":
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise _bad(key, value, source, "expected a list of strings")
        return list(value)
    if kind == "timeouts":
        if not isinstance(value, Mapping):
            raise _bad(key, value, source, "expected a table of stage = seconds")
        out: dict[str, float | None] = {}
        for stage, secs in value.items():
            if stage not in TIMEOUT_STAGES:
                raise _bad(f"timeouts.{stage}", secs, source,
                           "unknown stage; known: " + ", ".join(TIMEOUT_STAGES) + _suggest(stage, TIMEOUT_STAGES))
            if isinstance(secs, str) and from_text:
                try:
                    secs = float(secs)
                except ValueError:
                    raise _bad(f"timeouts.{stage}", secs, source, "expected seconds") from None
            if secs is not None and (isinstance(secs, bool) or not isinstance(secs, (int, float))
                                     or not 0 < secs <= 604800):
                raise _bad(f"timeouts.{stage}", secs, source,
                           "expected a number of seconds between 0 and 604800")
            out[stage] = None if secs is None else float(secs)
        return out
    # str
    if not isinstance(value, str):
        raise _bad(key, value, source, "expected a string")
    if info.choices:
        low = value.strip().lower() if key in ("security", "server_family") else value.strip()
        if low not in info.choices:
            raise _bad(key, value, source, "allowed: " + ", ".join(repr(c) for c in info.choices)
                       + _suggest(low, info.choices))
        return low
    return value


def _check_no_controls(key: str, value: str, source: str) -> None:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise _bad(key, value, source, "must not contain control characters (CR, LF, NUL, ...)")


def _check_address(key: str, value: str, source: str) -> str:
    _check_no_controls(key, value, source)
    _name, addr = parseaddr(value)
    if not addr or "@" not in addr or addr.startswith("@") or addr.endswith("@") or " " in addr:
        raise _bad(key, value, source, "expected an e-mail address such as 'alice@corp.example'")
    return value


def _check_mechanisms(raw: list[str], source: str) -> list[str]:
    """["automatic"], or the pinned mechanisms upper-cased, each once, in order."""
    names = [m.strip() for m in raw]
    if [n.lower() for n in names] == [AUTOMATIC]:
        return [AUTOMATIC]
    out: list[str] = []
    for name in names:
        up = name.upper()
        if up not in AUTH_MECHANISMS:
            why = ("'automatic' stands alone" if name.lower() == AUTOMATIC else
                   f"{name!r} is not supported" + _suggest(up, AUTH_MECHANISMS))
            raise _bad("auth_mechanisms", raw, source,
                       f"{why}; allowed: 'automatic' or a list of "
                       + ", ".join(repr(m) for m in AUTH_MECHANISMS))
        if up not in out:
            out.append(up)
    if not out:
        raise _bad("auth_mechanisms", raw, source,
                   "an empty list allows nothing: name mechanisms, or 'automatic' (the default)")
    return out


def _read_secret_file(key: str, path: str, source: str) -> Secret:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _bad(key, path, source, f"cannot read it: {exc.__class__.__name__}") from None
    return Secret(text.splitlines()[0] if text else "")


def _resolve_client_secret(values: dict[str, Any], src: Any, sources: dict[str, str]) -> None:
    """oauth_client_secret from the variable or file named, at load time."""
    name = values["oauth_client_secret_env"]
    if name is not None and values["oauth_client_secret"] is None:
        if name not in os.environ:
            raise _bad("oauth_client_secret_env", name, src("oauth_client_secret_env", "argument"),
                       f"the environment variable {name} is not set")
        values["oauth_client_secret"] = Secret(os.environ[name])
        sources["oauth_client_secret"] = f"env:{name}"
    path = values["oauth_client_secret_file"]
    if path is not None and values["oauth_client_secret"] is None:
        values["oauth_client_secret"] = _read_secret_file(
            "oauth_client_secret_file", path, src("oauth_client_secret_file", "argument"))
        sources["oauth_client_secret"] = f"file:{path}"
    secret = values["oauth_client_secret"]
    if secret is not None and not secret.reveal().strip():
        key = next((k for k in ("oauth_client_secret_env", "oauth_client_secret_file")
                    if values[k] is not None), "oauth_client_secret")
        raise _bad(key, values[key] if key != "oauth_client_secret" else None,
                   src(key, "argument"), "the client secret is empty: copy the secret's Value "
                   "from the app registration (Certificates & secrets)")


def certificate_key_file(path: str) -> str | None:
    """Where the private key of the PEM certificate ``path`` is: the file
    itself when it holds the key, else ``<name>.key`` beside it; None when
    neither (oauth_certificate_file: "key inside or beside it")."""
    try:
        text = Path(path).read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    if "PRIVATE KEY-----" in text:
        return path
    for candidate in (Path(path).with_suffix(".key"), Path(path + ".key")):
        if candidate.is_file():
            return str(candidate)
    return None


def _check_oauth(values: dict[str, Any], src: Any) -> None:
    """The OAuth settings and their partners."""
    tenant, client_id = values["oauth_tenant"], values["oauth_client_id"]
    has_secret = values["oauth_client_secret"] is not None
    cert = values["oauth_certificate_file"]
    if client_id is not None and tenant is None:
        raise _bad("oauth_tenant", None, src("oauth_tenant", "default"),
                   "oauth_client_id is set, so the tenant is needed too: set oauth_tenant to the "
                   "Directory (tenant) ID of the app registration")
    if tenant is not None and client_id is None:
        raise _bad("oauth_client_id", None, src("oauth_client_id", "default"),
                   "oauth_tenant is set, so the application is needed too: set oauth_client_id to "
                   "the Application (client) ID of the app registration")
    if client_id is None:
        for key in (*_CLIENT_SECRET_KEYS, "oauth_certificate_file"):
            if values[key] is not None:
                raise _bad(key, None if key == "oauth_client_secret" else values[key],
                           src(key, "argument"), "set oauth_tenant and oauth_client_id too "
                           "(the client-credentials flow needs all three)")
        return
    for key, value in (("oauth_tenant", tenant), ("oauth_client_id", client_id)):
        if not value.strip() or any(c in value for c in " /\\?#"):
            raise _bad(key, value, src(key, "argument"),
                       "expected an ID (a GUID) or, for the tenant, a verified domain name")
    if has_secret and cert is not None:
        given = next(k for k in _CLIENT_SECRET_KEYS if values[k] is not None)
        raise _bad("oauth_certificate_file", cert, src("oauth_certificate_file", "argument"),
                   f"{given} is set too: give a client secret or a certificate, not both")
    if not has_secret and cert is None:
        raise _bad("oauth_client_secret_env", None, src("oauth_client_secret_env", "default"),
                   "oauth_client_id needs a credential: set oauth_client_secret_env (an "
                   "environment variable), oauth_client_secret_file, or oauth_certificate_file")
    if values["token_provider"] is not None:
        raise _bad("token_provider", values["token_provider"], src("token_provider", "argument"),
                   "oauth_client_id is set too: use either token_provider=... or the "
                   "oauth_tenant/oauth_client_id settings, not both")
    authority = values["oauth_authority"]
    if not authority.lower().startswith("https://") or len(authority) <= len("https://"):
        raise _bad("oauth_authority", authority, src("oauth_authority", "argument"),
                   "expected an https:// URL such as 'https://login.microsoftonline.com'")
    if cert is not None:
        try:
            head = Path(cert).read_text(encoding="ascii", errors="replace")
        except OSError as exc:
            raise _bad("oauth_certificate_file", cert, src("oauth_certificate_file", "argument"),
                       f"cannot read it: {exc.__class__.__name__}") from None
        if "-----BEGIN CERTIFICATE-----" not in head:
            raise _bad("oauth_certificate_file", cert, src("oauth_certificate_file", "argument"),
                       "no PEM certificate in it (-----BEGIN CERTIFICATE-----); convert a .pfx "
                       "with: openssl pkcs12 -in app.pfx -out app.pem -nodes")
        if certificate_key_file(cert) is None:
            raise _bad("oauth_certificate_file", cert, src("oauth_certificate_file", "argument"),
                       "its private key is neither inside the file nor beside it (" +
                       str(Path(cert).with_suffix(".key")) + ")")
    import importlib.util
    if importlib.util.find_spec("msal") is None:
        raise _bad("oauth_client_id", client_id, src("oauth_client_id", "argument"),
                   "the client-credentials flow needs MSAL: pip install 'mailexpress[oauth]'")


def _check_credentials(values: dict[str, Any], src: Any) -> None:
    """use_auth: a username, and credentials some allowed mechanism can use."""
    mechs = values["auth_mechanisms"]
    allowed = AUTH_MECHANISMS if mechs == [AUTOMATIC] else tuple(mechs)
    token = values["token_provider"] is not None or values["oauth_client_id"] is not None
    token_mechs = {"XOAUTH2", "OAUTHBEARER"} & set(allowed)
    kerberos_only = mechs == ["GSSAPI"]     # a ticket from the credential cache
    if not values["username"] and not kerberos_only:
        raise _bad("username", values["username"], src("username", "default"),
                   "use_auth is true, so a username is required (with OAuth: the mailbox) "
                   "(or set use_auth = false)")
    if token and not token_mechs:
        raise _bad("auth_mechanisms", mechs, src("auth_mechanisms", "argument"),
                   "a token source is configured but neither XOAUTH2 nor OAUTHBEARER is allowed: "
                   "add one, or leave auth_mechanisms = 'automatic'")
    if token or kerberos_only or values["password"] is not None:
        if not token and not set(allowed) - token_mechs:
            raise _bad("auth_mechanisms", mechs, src("auth_mechanisms", "argument"),
                       f"{' and '.join(sorted(token_mechs))} need a token: set oauth_tenant and "
                       "oauth_client_id (docs/oauth.md) or pass token_provider=...")
        return
    if not set(allowed) - token_mechs:
        raise _bad("auth_mechanisms", mechs, src("auth_mechanisms", "argument"),
                   f"{' and '.join(sorted(token_mechs))} need a token: set oauth_tenant and "
                   "oauth_client_id (docs/oauth.md) or pass token_provider=...")
    raise _bad("password", None, src("password", "default"),
               "use_auth is true, so a password is required: set password_env "
               "(an environment variable), password_file, or password; or a token source "
               "for OAuth (oauth_tenant and oauth_client_id, or token_provider=...)")


@dataclass(frozen=True, eq=True)
class Config:
    """A validated configuration.  Build it with `load_config`, or
    directly; ``config.replace(**changes)`` returns a validated copy.

    ``sources`` says where each value came from (``default``, ``file:PATH``,
    ``env:NAME``, ``argument``).
    """

    host: str
    port: int | None = None
    security: str = "starttls"
    use_auth: bool = True
    username: str | None = None
    password: Secret | None = field(default=None, repr=False)
    password_env: str | None = None
    password_file: str | None = None
    from_address: str | None = None
    reply_to_address: str | None = None
    verify: bool = True
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    min_tls_version: str = "1.2"
    server_name: str | None = None
    ehlo_name: str | None = None
    allow_insecure_auth: bool = False
    auth_mechanisms: list[str] = field(default_factory=lambda: [AUTOMATIC])
    oauth_tenant: str | None = None
    oauth_client_id: str | None = None
    oauth_client_secret: Secret | None = field(default=None, repr=False)
    oauth_client_secret_env: str | None = None
    oauth_client_secret_file: str | None = None
    oauth_certificate_file: str | None = None
    oauth_scope: str = DEFAULT_OAUTH_SCOPE
    oauth_authority: str = DEFAULT_OAUTH_AUTHORITY
    kerberos_service: str = "smtp"
    token_provider: Any = field(default=None, compare=False)
    timeouts: dict[str, float | None] = field(default_factory=dict)
    limits: Limits | None = None
    deadline: float | None = None
    server_family: str | None = None
    connector_name: str | None = None
    service_account: str | None = None
    probe_authoritative_sender: str | None = None
    probe_external_sender: str | None = None
    probe_recipient: str | None = None
    require: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        src = self.sources.get
        values: dict[str, Any] = {}
        for info in FIELDS:
            raw = getattr(self, info.name)
            values[info.name] = _coerce(info.name, raw, src(info.name, "argument"), from_text=False)
        # defaults that depend on other fields
        if values["port"] is None:
            values["port"] = DEFAULT_PORTS[values["security"]]
        if values["ehlo_name"] is None:
            values["ehlo_name"] = _default_ehlo_name()
        host = values["host"]
        if not host or not host.strip():
            raise _bad("host", host, src("host", "argument"), "the mail server's name or address is required")
        for key in ("host", "username", "ehlo_name", "server_name", "connector_name", "service_account",
                    "oauth_tenant", "oauth_client_id", "oauth_scope", "oauth_authority", "kerberos_service"):
            if values[key] is not None:
                _check_no_controls(key, values[key], src(key, "argument"))
        if " " in host:
            raise _bad("host", host, src("host", "argument"), "a host name has no spaces")
        for key in ("from_address", "reply_to_address", "probe_authoritative_sender",
                    "probe_external_sender", "probe_recipient"):
            if values[key] is not None:
                _check_address(key, values[key], src(key, "argument"))
        for key in ("ca_file", "client_cert", "client_key", "password_file", "oauth_client_secret_file",
                    "oauth_certificate_file"):
            path = values[key]
            if path is not None and not Path(path).is_file():
                raise _bad(key, path, src(key, "argument"), "no such file")
        if values["client_key"] and not values["client_cert"]:
            raise _bad("client_key", values["client_key"], src("client_key", "argument"),
                       "set client_cert too")
        values["auth_mechanisms"] = _check_mechanisms(values["auth_mechanisms"],
                                                      src("auth_mechanisms", "argument"))
        # resolve the password now, so a missing one fails at load time
        if values["password_env"] is not None and values["password"] is None:
            name = values["password_env"]
            if name not in os.environ:
                raise _bad("password_env", name, src("password_env", "argument"),
                           f"the environment variable {name} is not set")
            values["password"] = Secret(os.environ[name])
            self.sources["password"] = f"env:{name}"
        if values["password_file"] is not None and values["password"] is None:
            try:
                text = Path(values["password_file"]).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise _bad("password_file", values["password_file"], src("password_file", "argument"),
                           f"cannot read it: {exc.__class__.__name__}") from None
            values["password"] = Secret(text.splitlines()[0] if text else "")
            self.sources["password"] = f"file:{values['password_file']}"
        _resolve_client_secret(values, src, self.sources)
        _check_oauth(values, src)
        if values["use_auth"]:
            _check_credentials(values, src)
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        parts = []
        for info in FIELDS:
            value = getattr(self, info.name)
            if info.name in _SECRET_FIELDS:
                if value is not None:
                    parts.append(f"{info.name}='********'")
            elif info.name == "token_provider":
                if value is not None:
                    parts.append(f"token_provider={describe_provider(value)}")
            elif value != info.default or info.name == "host":
                parts.append(f"{info.name}={value!r}")
        return "Config(" + ", ".join(parts) + ")"

    def _repr_html_(self) -> str:
        rows = []
        for key, value in self.to_dict().items():
            if value in (None, [], {}) and key not in ("host", "port"):
                continue
            rows.append(f"<tr><td><code>{html.escape(key)}</code></td><td>{html.escape(repr(value))}</td>"
                        f"<td>{html.escape(self.sources.get(key, 'argument'))}</td></tr>")
        return ("<div><b>mailexpress Config</b><table><tr><th>setting</th><th>value</th><th>from</th></tr>"
                + "".join(rows) + "</table></div>")

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (validated again)."""
        unknown = [k for k in changes if k not in _FIELD]
        if unknown:
            k = unknown[0]
            raise _bad(k, changes[k], "argument", "unknown setting" + _suggest(k, _FIELD))
        sources = dict(self.sources)
        sources.update({k: "argument" for k in changes})
        base: dict[str, Any] = {}
        for group in (_PASSWORD_KEYS, _CLIENT_SECRET_KEYS):
            if any(k in changes for k in group):
                base.update({k: None for k in group})
        return dataclasses.replace(self, **{**base, **changes}, sources=sources)

    @property
    def auth_pinned(self) -> bool:
        """True when auth_mechanisms names the mechanisms (not 'automatic')."""
        return self.auth_mechanisms != [AUTOMATIC]

    @property
    def has_token_source(self) -> bool:
        """True when OAuth is configured (oauth_client_id or token_provider)."""
        return self.oauth_client_id is not None or self.token_provider is not None

    def to_dict(self, *, show_password: bool = False) -> dict[str, Any]:
        """The settings as plain data; the password and the client secret
        masked unless asked; a token_provider described, not included."""
        out: dict[str, Any] = {}
        for info in FIELDS:
            value = getattr(self, info.name)
            if info.name in _SECRET_FIELDS and value is not None:
                value = value.reveal() if show_password else "********"
            elif info.name == "token_provider" and value is not None:
                value = describe_provider(value)
            elif isinstance(value, Limits):
                value = value.to_dict()
            out[info.name] = value
        return out

    def session_kwargs(self, *, verify: bool | None = None) -> dict[str, Any]:
        """Keyword arguments for `mailexpress._core.Session`, with a
        TLS context shared by every Session of the same TLS settings (the
        trust store is read once, not per connection, and its session cache
        lets the next connection to the same server resume the TLS session
        instead of a full handshake).  ``verify`` overrides the config's."""
        verify = self.verify if verify is None else verify
        ctx = None if self.security == "none" else _shared_tls_context(
            verify, *(_file_key(f) for f in (self.ca_file, self.client_cert, self.client_key)),
            self.min_tls_version)
        return {
            "host": self.host,
            "port": self.port,
            "security": self.security,
            "server_name": self.server_name,
            "verify": verify,
            "tls_context": ctx,
            "ca_file": self.ca_file,
            "client_cert": self.client_cert,
            "client_key": self.client_key,
            "min_tls_version": self.min_tls_version,
            "ehlo_name": self.ehlo_name,
            "timeouts": dict(self.timeouts),
            "allow_insecure_auth": self.allow_insecure_auth,
            # HELO only where neither TLS nor authentication is needed
            "helo_fallback": self.security == "none" and not self.use_auth,
            # the allowed set; mailexpress.auth picks among them in order
            "auth_mechanisms": None if not self.auth_pinned else tuple(self.auth_mechanisms),
        }


def describe_provider(provider: Any) -> str:
    """A token_provider named for messages: its type or function, never its state."""
    name = getattr(provider, "__qualname__", None) or type(provider).__qualname__
    module = getattr(provider, "__module__", None) or type(provider).__module__
    return f"<{module}.{name}>" if module and module != "builtins" else f"<{name}>"


def _file_key(path: str | None) -> tuple[str, int] | None:
    """A file and its modification time: a replaced CA file is read anew."""
    if path is None:
        return None
    try:
        return (path, os.stat(path).st_mtime_ns)
    except OSError:
        return (path, -1)           # tls_context() reports it, naming the file


@functools.lru_cache(maxsize=16)
def _shared_tls_context(verify: bool, ca: tuple[str, int] | None, cert: tuple[str, int] | None,
                        key: tuple[str, int] | None, min_tls_version: str) -> object:
    return _core.tls_context(verify=verify, ca_file=ca and ca[0], client_cert=cert and cert[0],
                             client_key=key and key[0],
                             min_tls_version="1.3" if min_tls_version == "1.3" else "1.2")


def template() -> str:
    """A commented TOML config with every key (for ``mailexpress config init``)."""
    lines = ["# mailexpress configuration.  Later sources win: this file < MAILEXPRESS_* environment",
             "# < keyword arguments.  Every key: docs/configuration.md", ""]
    examples: dict[str, str] = {
        "host": '"mail.corp.example"', "port": "587", "username": '"CORP\\\\svc-mailer"',
        "password_env": '"SVC_MAILER_PASSWORD"', "from_address": '"noreply@corp.example"',
        "reply_to_address": '"helpdesk@corp.example"', "server_family": '"exchange2016"',
        "connector_name": '"EX01\\\\Client Frontend EX01"', "service_account": '"CORP\\\\svc-mailer"',
        "oauth_tenant": '"00000000-0000-0000-0000-000000000000"',
        "oauth_client_id": '"00000000-0000-0000-0000-000000000000"',
        "oauth_client_secret_env": '"MAILER_CLIENT_SECRET"',
        "oauth_client_secret_file": '"/etc/mailexpress/client-secret"',
        "oauth_certificate_file": '"/etc/mailexpress/app.pem"',
        "limits": '"exchange_online"',
    }
    active = {"host", "port", "security", "use_auth", "username", "password_env", "from_address"}
    for f in FIELDS:
        if f.kind == "timeouts":
            continue
        if f.kind == "object":
            lines += [f"# {f.name}: {f.doc}", ""]
            continue
        if f.name == "oauth_tenant":
            lines += ["# --- Exchange Online with OAuth (docs/oauth.md), instead of a password;",
                      "# username is then the mailbox.  pip install 'mailexpress[oauth]'", ""]
        value = examples.get(f.name)
        if value is None:
            value = ("true" if f.default else "false") if isinstance(f.default, bool) else \
                    (f'"{f.default}"' if isinstance(f.default, str) else
                     (str(f.default).replace("'", '"') if f.default not in (None,) else '""'))
        lines.append(f"# {f.doc}")
        lines.append(f"{'' if f.name in active else '# '}{f.name} = {value}")
        lines.append("")
    lines += ["# Per-stage timeouts in seconds (RFC 5321 defaults otherwise).", "[timeouts]",
              "# connect = 30", "# mail = 300", ""]
    return "\n".join(lines)


def _default_ehlo_name() -> str:
    name = socket.gethostname() or "localhost"
    if any(ord(c) <= 0x20 or c in "<>" or ord(c) >= 0x7F for c in name):
        return "localhost"
    return name


def _read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(p)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid TOML: {exc}") from None
    # allow the settings under a [mailexpress] table too
    if set(data) == {"mailexpress"} and isinstance(data["mailexpress"], dict):
        data = data["mailexpress"]
    return data


def _env_values(env: Mapping[str, str], password_vars: set[str]) -> dict[str, tuple[Any, str]]:
    # password_vars: the variables password_env and oauth_client_secret_env name
    out: dict[str, tuple[Any, str]] = {}
    timeouts: dict[str, str] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in password_vars:
            continue        # the variable password_env names holds a password, not a setting
        key = name[len(ENV_PREFIX):].lower()
        if key.startswith("timeout_"):
            timeouts[key[len("timeout_"):]] = value
            continue
        # MAILEXPRESS_CONFIG names the file; MAILEXPRESS_BUILD_* are setup.py's
        if key == "config" or key.startswith("build_"):
            continue
        if key not in _FIELD or key == "timeouts":
            raise _bad(name, value, "the environment",
                       "unknown MAILEXPRESS_ variable" + _suggest(key, _FIELD))
        if key in _KEYWORD_ONLY:
            raise _bad(name, value, "the environment", f"{key} is a Python object: pass "
                       f"{key}=... to load_config, connect, send_as or send_many")
        out[key] = (value, f"env:{name}")
    if timeouts:
        out["timeouts"] = (timeouts, "env:MAILEXPRESS_TIMEOUT_*")
    return out


def load_config(path: str | os.PathLike[str] | None = None, *,
                env: Mapping[str, str] | None = None, **overrides: Any) -> Config:
    """Loads a `Config`.

    ``path`` is a TOML file (default: ``$MAILEXPRESS_CONFIG`` if set);
    ``env`` the environment to read ``MAILEXPRESS_*`` and the variable named
    by ``password_env`` from (default ``os.environ``; pass ``{}`` to ignore
    it); keyword arguments win over both.
    Timeouts from different sources are merged stage by stage.
    """
    environ = os.environ if env is None else env
    if path is None and environ.get(ENV_PREFIX + "CONFIG"):
        path = environ[ENV_PREFIX + "CONFIG"]
    layers: list[tuple[dict[str, Any], str, bool]] = []
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_toml(path)
        for key in data:
            if key not in _FIELD:
                raise _bad(key, data[key], f"file:{path}", "unknown setting" + _suggest(key, _FIELD))
            if key in _KEYWORD_ONLY:
                raise _bad(key, data[key], f"file:{path}", f"{key} is a Python object: pass "
                           f"{key}=... to load_config, connect, send_as or send_many")
        if data.get("oauth_client_secret") is not None:
            _check_private(path)
        layers.append((data, f"file:{path}", False))
    password_vars = {v for key in ("password_env", "oauth_client_secret_env")
                     for v in (data.get(key) if path is not None else None,
                               overrides.get(key), environ.get(ENV_PREFIX + key.upper()))
                     if isinstance(v, str)}
    env_layer = _env_values(environ, password_vars)
    for key, (value, source) in env_layer.items():
        layers.append(({key: value}, source, True))
    for key in overrides:
        if key not in _FIELD:
            raise _bad(key, overrides[key], "argument", "unknown setting" + _suggest(key, _FIELD))
    if overrides:
        layers.append((dict(overrides), "argument", False))

    values: dict[str, Any] = {}
    sources: dict[str, str] = {info.name: "default" for info in FIELDS}
    for data, source, from_text in layers:
        for key, raw in data.items():
            value = _coerce(key, raw, source, from_text)
            for group in (_PASSWORD_KEYS, _CLIENT_SECRET_KEYS):
                if key in group and value is not None:
                    # a later layer's password (client secret) source replaces earlier ones
                    for other in group:
                        values.pop(other, None)
            if key == "timeouts":
                merged = dict(values.get("timeouts", {}))
                merged.update(value)
                value = merged
            values[key] = value
            sources[key] = source
    if "host" not in values:
        raise ConfigError("host is not set: give it in the config file, as "
                          "MAILEXPRESS_HOST, or as host=...", )
    name = values.get("password_env")
    if name and values.get("password") is None:
        # from the environment this call reads, not necessarily os.environ
        if name not in environ:
            raise _bad("password_env", name, sources["password_env"],
                       f"the environment variable {name} is not set")
        values["password"] = Secret(environ[name])
        sources["password"] = f"env:{name}"
    name = values.get("oauth_client_secret_env")
    if name and values.get("oauth_client_secret") is None:
        if name not in environ:
            raise _bad("oauth_client_secret_env", name, sources["oauth_client_secret_env"],
                       f"the environment variable {name} is not set")
        values["oauth_client_secret"] = Secret(environ[name])
        sources["oauth_client_secret"] = f"env:{name}"
    return Config(**values, sources=sources)


def _check_private(path: str | os.PathLike[str]) -> None:
    """A secret written in a TOML file: only if others cannot read the file."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & 0o004:
        raise _bad("oauth_client_secret", None, f"file:{path}",
                   f"a client secret inline in a file everyone may read (mode {mode & 0o777:o}): "
                   f"chmod 600 {path}, or better move it out with oauth_client_secret_env or "
                   "oauth_client_secret_file")
