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
AUTH_MECHANISMS = ("PLAIN", "LOGIN")


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
    kind: str          # str, int, bool, float, path, list, timeouts, secret
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
    FieldInfo("use_auth", "bool", True, "Use basic authentication (AUTH PLAIN or LOGIN)."),
    FieldInfo("username", "str", None, "Account name for authentication (e.g. CORP\\svc-mailer or svc-mailer@corp.example)."),
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
    FieldInfo("auth_mechanisms", "list", ["PLAIN", "LOGIN"], "Mechanisms that may be used, in any order.", AUTH_MECHANISMS),
    FieldInfo("timeouts", "timeouts", {}, "Per-stage timeouts in seconds: " + ", ".join(TIMEOUT_STAGES) + "."),
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


def _suggest(key: str, known: Any) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _bad(key: str, value: Any, source: str, allowed: str) -> ConfigError:
    shown = "<hidden>" if key == "password" else repr(value)
    exc = ConfigError(f"{key} = {shown} (from {source}): {allowed}")
    exc.key, exc.value, exc.source = key, (None if key == "password" else value), source
    return exc


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(key: str, value: Any, source: str, from_text: bool) -> Any:
    """Turns one raw value into the field's type, or raises ConfigError."""
    info = _FIELD[key]
    kind = info.kind
    if value is None:
        return None
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
    auth_mechanisms: list[str] = field(default_factory=lambda: ["PLAIN", "LOGIN"])
    timeouts: dict[str, float | None] = field(default_factory=dict)
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
        for key in ("host", "username", "ehlo_name", "server_name", "connector_name", "service_account"):
            if values[key] is not None:
                _check_no_controls(key, values[key], src(key, "argument"))
        if " " in host:
            raise _bad("host", host, src("host", "argument"), "a host name has no spaces")
        for key in ("from_address", "reply_to_address", "probe_authoritative_sender",
                    "probe_external_sender", "probe_recipient"):
            if values[key] is not None:
                _check_address(key, values[key], src(key, "argument"))
        for key in ("ca_file", "client_cert", "client_key", "password_file"):
            path = values[key]
            if path is not None and not Path(path).is_file():
                raise _bad(key, path, src(key, "argument"), "no such file")
        if values["client_key"] and not values["client_cert"]:
            raise _bad("client_key", values["client_key"], src("client_key", "argument"),
                       "set client_cert too")
        mechs = [m.upper() for m in values["auth_mechanisms"]]
        for m in mechs:
            if m not in AUTH_MECHANISMS:
                raise _bad("auth_mechanisms", values["auth_mechanisms"], src("auth_mechanisms", "argument"),
                           "allowed: 'PLAIN', 'LOGIN'")
        values["auth_mechanisms"] = mechs
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
        if values["use_auth"]:
            if not values["username"]:
                raise _bad("username", values["username"], src("username", "default"),
                           "use_auth is true, so a username is required (or set use_auth = false)")
            if values["password"] is None:
                raise _bad("password", None, src("password", "default"),
                           "use_auth is true, so a password is required: set password_env "
                           "(an environment variable), password_file, or password")
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        parts = []
        for info in FIELDS:
            value = getattr(self, info.name)
            if info.name == "password":
                parts.append("password=" + ("'********'" if value is not None else "None"))
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
        if "password" in changes or "password_env" in changes or "password_file" in changes:
            base = {k: None for k in _PASSWORD_KEYS}
        else:
            base = {}
        return dataclasses.replace(self, **{**base, **changes}, sources=sources)

    def to_dict(self, *, show_password: bool = False) -> dict[str, Any]:
        """The settings as plain data; the password masked unless asked."""
        out: dict[str, Any] = {}
        for info in FIELDS:
            value = getattr(self, info.name)
            if info.name == "password" and value is not None:
                value = value.reveal() if show_password else "********"
            out[info.name] = value
        return out

    def session_kwargs(self, *, verify: bool | None = None) -> dict[str, Any]:
        """Keyword arguments for `mailexpress._core.Session`, with a
        TLS context shared by every Session of the same TLS settings (the
        trust store is read once, not per connection).  ``verify``
        overrides the config's."""
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
            "auth_mechanisms": tuple(self.auth_mechanisms),
        }


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
    }
    active = {"host", "port", "security", "use_auth", "username", "password_env", "from_address"}
    for f in FIELDS:
        if f.kind == "timeouts":
            continue
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
        layers.append((data, f"file:{path}", False))
    password_vars = {v for v in (data.get("password_env") if path is not None else None,
                                 overrides.get("password_env"), environ.get(ENV_PREFIX + "PASSWORD_ENV"))
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
            if key in _PASSWORD_KEYS and value is not None:
                # a later layer's password source replaces earlier ones
                for other in _PASSWORD_KEYS:
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
    return Config(**values, sources=sources)
