"""Test helpers: an in-process connector emulator with its own test CA and
its own OAuth token issuer.

Needs the ``testing`` extra (``pip install 'mailexpress[testing]'``).
"""
from .emulator import PRESETS, AuthAttempt, ConnectorEmulator, ReceivedMessage, User
from .tokens import AccessToken, EmulatorTokenProvider, TestIssuer, TokenRejected

__all__ = ["PRESETS", "AccessToken", "AuthAttempt", "ConnectorEmulator", "EmulatorTokenProvider",
           "ReceivedMessage", "TestIssuer", "TokenRejected", "User"]
