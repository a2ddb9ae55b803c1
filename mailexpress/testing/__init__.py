"""Test helpers: an in-process connector emulator with its own test CA.

Needs the ``testing`` extra (``pip install 'mailexpress[testing]'``).
"""
from .emulator import ConnectorEmulator, ReceivedMessage, User

__all__ = ["ConnectorEmulator", "ReceivedMessage", "User"]
