"""The server side of the SASL mechanisms the emulator answers beyond
PLAIN/LOGIN: XOAUTH2 and OAUTHBEARER (RFC 7628) blobs and their error
challenges, and NTLM through pyspnego's acceptor.

No I/O here: the emulator does the dialogue.
"""
from __future__ import annotations

import base64
import json
import os
import tempfile
import threading
import weakref
from collections.abc import Iterable
from typing import Any

__all__ = ["NtlmAcceptor", "ntlm_local", "ntlm_names", "OAuthBlobError", "error_challenge", "parse_oauthbearer", "parse_xoauth2"]


class OAuthBlobError(ValueError):
    """The decoded client response is not a well-formed XOAUTH2/OAUTHBEARER message."""


def _bearer(kvpairs: list[bytes]) -> str:
    for kv in kvpairs:
        key, sep, value = kv.partition(b"=")
        if sep and key == b"auth":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() != b"bearer" or not token:
                raise OAuthBlobError("auth= is not 'Bearer <token>'")
            return token.decode("ascii", "strict")
    raise OAuthBlobError("no auth=Bearer field")


def parse_xoauth2(blob: bytes) -> tuple[str, str]:
    """``user=<user>\\x01auth=Bearer <token>\\x01\\x01`` -> (user, token)."""
    if not blob.endswith(b"\x01\x01"):
        raise OAuthBlobError("does not end with ^A^A")
    fields = blob[:-2].split(b"\x01")
    user = None
    for kv in fields:
        if kv.startswith(b"user="):
            user = kv[5:].decode("utf-8")
    if not user:
        raise OAuthBlobError("no user= field")
    try:
        return user, _bearer(fields)
    except UnicodeDecodeError:
        raise OAuthBlobError("token is not ASCII") from None


def _saslname(text: bytes) -> str:
    """RFC 5801: '=2C' is ',' and '=3D' is '='; any other '=' is an error."""
    out = text.replace(b"=2C", b",").replace(b"=3D", b"\0")
    if b"=" in out:
        raise OAuthBlobError("bad escape in a=")
    return out.replace(b"\0", b"=").decode("utf-8")


def parse_oauthbearer(blob: bytes) -> tuple[str, str]:
    """RFC 7628 ``n,a=<user>,^Ahost=..^Aport=..^Aauth=Bearer <token>^A^A``
    -> (user, token).  Channel binding (``p=``) is refused; ``a=`` is
    required (Exchange needs the mailbox)."""
    gs2, sep, rest = blob.partition(b"\x01")
    if not sep or not rest.endswith(b"\x01\x01"):
        raise OAuthBlobError("not a GS2 header followed by ^A-separated fields ending ^A^A")
    parts = gs2.split(b",")
    if len(parts) != 3 or parts[0] not in (b"n", b"y") or parts[2] != b"":
        raise OAuthBlobError("GS2 header must be 'n,a=<user>,' (no channel binding)")
    if not parts[1].startswith(b"a="):
        raise OAuthBlobError("no a=<user> in the GS2 header")
    try:
        user = _saslname(parts[1][2:])
        token = _bearer(rest[:-2].split(b"\x01"))
    except UnicodeDecodeError:
        raise OAuthBlobError("not UTF-8") from None
    if not user:
        raise OAuthBlobError("empty a=")
    return user, token


def error_challenge(mechanism: str, scope: str, openid_configuration: str) -> str:
    """The base64 text of the ``334`` a failed token draws: the XOAUTH2
    form (status, schemes, scope) or RFC 7628's (status invalid_token,
    scope, openid-configuration)."""
    doc: dict[str, Any]
    if mechanism == "XOAUTH2":
        doc = {"status": "401", "schemes": "bearer", "scope": scope}
    else:
        doc = {"status": "invalid_token", "scope": scope, "openid-configuration": openid_configuration}
    return base64.b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode("ascii")


# pyspnego's NTLM acceptor reads its accounts from the file named by the
# environment variable NTLM_USER_FILE, when the context is made and again
# when it checks the client's AUTHENTICATE message.  The environment is the
# process's, so every acceptor step runs under this lock with the variable
# pointing at its own emulator's file, and the old value is put back.
_ENV_LOCK = threading.Lock()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def ntlm_names(user: str, domain: str) -> list[tuple[str, str]]:
    """The (domain, user) pairs an NTLM client may send for an account
    named ``user`` (``CORP\\svc``, ``svc@corp.example`` or ``svc``)."""
    dom, sep, local = user.rpartition("\\")
    if sep:
        return [(dom, local), (domain, local), ("", local)]
    if "@" in user:
        return [("", user), (domain, user.split("@")[0]), ("", user.split("@")[0])]
    return [(domain, user), ("", user)]


def ntlm_local(name: str) -> str:
    """``CORP\\svc`` / ``svc@corp.example`` / ``svc`` -> ``svc`` (lower case)."""
    return name.rpartition("\\")[2].split("@")[0].lower()


class NtlmAcceptor:
    """One emulator's NTLM accounts (a ``DOMAIN:USER:PASSWORD`` file, mode
    0600, removed by `close`) and pyspnego acceptor contexts over them."""

    def __init__(self, accounts: Iterable[tuple[str, str]], domain: str) -> None:
        import spnego   # noqa: F401  (ImportError: the emulator answers 454)
        fd, self.path = tempfile.mkstemp(prefix="mailexpress-ntlm-", text=True)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for user, password in accounts:
                if any(c in user + password for c in ":\r\n"):
                    continue        # not expressible in the file format
                for d, u in ntlm_names(user, domain):
                    f.write(f"{d}:{u}:{password}\n")
        self.domain = domain
        # removed by close(), or when the acceptor is collected or Python exits
        self._remove = weakref.finalize(self, _unlink, self.path)

    def close(self) -> None:
        self._remove()

    def context(self) -> Any:
        import spnego
        with self._env():
            return spnego.server(protocol="ntlm")

    def step(self, context: Any, token: bytes) -> bytes | None:
        """The acceptor's answer to one client message; raises
        spnego's SpnegoError when the logon is denied."""
        with self._env():
            out = context.step(token)
        return out if out is None else bytes(out)

    def _env(self) -> _EnvFile:
        return _EnvFile(self.path)


class _EnvFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self.old: str | None = None

    def __enter__(self) -> None:
        _ENV_LOCK.acquire()
        self.old = os.environ.get("NTLM_USER_FILE")
        os.environ["NTLM_USER_FILE"] = self.path

    def __exit__(self, *exc: object) -> None:
        if self.old is None:
            os.environ.pop("NTLM_USER_FILE", None)
        else:
            os.environ["NTLM_USER_FILE"] = self.old
        _ENV_LOCK.release()
