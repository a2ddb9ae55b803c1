"""mailexpress: authenticated SMTP submission and sender-permission probing.

    import mailexpress as mx
    cfg = mx.load_config("mailexpress.toml")
    result = mx.send_as(cfg, "alice@corp.example", to=["bob@partner.example"],
                        subject="Your package is ready", body="...")
"""
import logging
from typing import TYPE_CHECKING, Any

from . import _core
from .bulk import BulkResult, Progress, send_many
from .client import Session, SendResult, connect, send_as
from .template import Template
from .config import Config, Secret, load_config
from .diagnose import Check, ConnectorReport, SenderProbe, test_connector
from .errors import (
    AuthError,
    CertificateError,
    ConcurrentUseError,
    ConfigError,
    ConnectError,
    ConnectionLost,
    DataRefused,
    DuplicateMessage,
    Error,
    InputError,
    InsecureAuthError,
    NotSupportedError,
    ProtocolError,
    RecipientsRefused,
    RefusedError,
    SenderRefused,
    ServiceUnavailable,
    StateError,
    TimeoutError,
    TLSError,
)
from .limits import Limits
from .reply import Reply, Stage

if TYPE_CHECKING:
    from .auth import AuthResult

# a library logs, the application decides where to: nothing reaches stderr by default
logging.getLogger("mailexpress").addHandler(logging.NullHandler())

__version__ = "0.1.0"
OPENSSL_VERSION: str = _core.OPENSSL_VERSION

__all__ = [
    "AuthError", "CertificateError", "ConcurrentUseError", "Config", "ConfigError",
    "ConnectError", "ConnectionLost", "DataRefused", "DuplicateMessage", "Error", "InputError",
    "InsecureAuthError", "NotSupportedError", "ProtocolError", "RecipientsRefused",
    "RefusedError", "Reply", "Secret", "SendResult", "SenderRefused", "ServiceUnavailable",
    "Session", "Stage", "StateError", "TLSError", "TimeoutError", "connect", "load_config",
    "send_as", "OPENSSL_VERSION", "__version__", "Check", "ConnectorReport", "SenderProbe",
    "test_connector", "BulkResult", "Progress", "send_many", "Template", "AuthResult",
    "Limits",
]


def __getattr__(name: str) -> Any:
    # mailexpress.auth is imported when first used (connect), not with the package
    if name == "AuthResult":
        from .auth import AuthResult
        return AuthResult
    raise AttributeError(f"module 'mailexpress' has no attribute {name!r}")
