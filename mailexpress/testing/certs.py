"""Test certificates for the emulator, made with trustme (one CA per process).

``valid`` names localhost, 127.0.0.1, ::1 and mail.corp.example; ``expired``
the same, but its validity ended yesterday; ``wrong_host`` names only
other-host.example.
"""
from __future__ import annotations

import datetime
import os
import ssl
import tempfile
import threading
from dataclasses import dataclass, field

__all__ = ["TestCertificates", "test_certificates"]

_HOSTS = ("localhost", "127.0.0.1", "::1", "mail.corp.example")


@dataclass
class TestCertificates:
    """A CA with its PEM file on disk and server certificates signed by it."""

    __test__ = False  # not a pytest test class

    ca: object
    ca_file: str
    _issued: dict[str, object] = field(default_factory=dict)

    def _issue(self, kind: str) -> object:
        if kind not in self._issued:
            ca = self.ca
            if kind == "valid":
                cert = ca.issue_cert(*_HOSTS)  # type: ignore[attr-defined]
            elif kind == "expired":
                now = datetime.datetime.now(datetime.timezone.utc)
                cert = ca.issue_cert(*_HOSTS, not_before=now - datetime.timedelta(days=30),  # type: ignore[attr-defined]
                                     not_after=now - datetime.timedelta(days=1))
            elif kind == "wrong_host":
                cert = ca.issue_cert("other-host.example")  # type: ignore[attr-defined]
            else:
                raise ValueError(f"certificate must be 'valid', 'expired' or 'wrong_host', not {kind!r}")
            self._issued[kind] = cert
        return self._issued[kind]

    def server_context(self, kind: str = "valid") -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self._issue(kind).configure_cert(ctx)  # type: ignore[attr-defined]
        return ctx


_lock = threading.Lock()
_cached: list[TestCertificates] = []


def test_certificates() -> TestCertificates:
    """The process-wide test CA (made on first use)."""
    with _lock:
        if not _cached:
            try:
                import trustme
            except ImportError:  # pragma: no cover - depends on the install
                raise ImportError("mailexpress.testing needs trustme: pip install 'mailexpress[testing]'") from None
            ca = trustme.CA(organization_name="mailexpress test CA")
            fd, path = tempfile.mkstemp(prefix="mailexpress-ca-", suffix=".pem")
            with os.fdopen(fd, "wb") as fh:
                fh.write(ca.cert_pem.bytes())
            _cached.append(TestCertificates(ca=ca, ca_file=path))
        return _cached[0]


test_certificates.__test__ = False  # type: ignore[attr-defined]
