"""The extension module itself: PEP 489 init, exceptions, OpenSSL pin."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import smtplib
import subprocess
import sys

import pytest

import mailexpress as mx
from mailexpress import _core


def test_reimport_gives_a_fresh_module_with_its_own_types():
    spec = importlib.util.find_spec("mailexpress._core")
    assert spec is not None and spec.origin
    loader = importlib.machinery.ExtensionFileLoader("mailexpress._core", spec.origin)
    spec2 = importlib.util.spec_from_file_location("mailexpress._core", spec.origin, loader=loader)
    fresh = importlib.util.module_from_spec(spec2)
    spec2.loader.exec_module(fresh)
    assert fresh is not _core and fresh.Session is not _core.Session
    s = fresh.Session("127.0.0.1", 1)
    with pytest.raises(mx.StateError):   # the same Python exception classes
        s.noop()


def test_every_error_is_an_smtplib_exception():
    for name in mx.errors.__all__:
        cls = getattr(mx, name)
        assert issubclass(cls, mx.Error) and issubclass(cls, smtplib.SMTPException)
    assert issubclass(mx.TimeoutError, TimeoutError)
    assert issubclass(mx.ConfigError, ValueError)


def test_openssl_version_matches_the_build():
    assert mx.OPENSSL_VERSION.startswith("OpenSSL 3.")


def test_default_timeouts_follow_rfc5321():
    d = _core.DEFAULT_TIMEOUTS
    assert d["banner"] == 300 and d["mail"] == 300 and d["rcpt"] == 300
    assert d["data"] == 120 and d["data_block"] == 180 and d["end_of_data"] == 600
    assert set(_core.TIMEOUT_STAGES) == set(mx.config.TIMEOUT_STAGES)


HOSTS_NAME = "mailexpress-dual.test"


@pytest.fixture
def dual_stack_name():
    """A name with ::1 first and 127.0.0.1 second, for the duration of a test."""
    if os.geteuid() != 0 or not os.access("/etc/hosts", os.W_OK):
        pytest.skip("needs root to add a test name to /etc/hosts")
    with open("/etc/hosts") as fh:
        original = fh.read()
    with open("/etc/hosts", "a") as fh:
        fh.write(f"\n::1 {HOSTS_NAME}\n127.0.0.1 {HOSTS_NAME}\n")
    try:
        yield HOSTS_NAME
    finally:
        with open("/etc/hosts", "w") as fh:
            fh.write(original)


def test_every_address_of_a_name_is_tried_in_order(dual_stack_name, emulator):
    # the emulator listens on 127.0.0.1 only: ::1 is refused, then IPv4 works
    s = mx.Session(dual_stack_name, emulator.port, security="none", timeouts={"connect": 5})
    s.connect()
    attempts = s.connect_attempts
    s.close()
    assert [a["address"] for a in attempts] == ["::1", "127.0.0.1"]
    assert attempts[0]["error"] == "Connection refused" and attempts[1]["error"] is None
    assert s.peer_address[0] == "127.0.0.1"


def test_import_in_a_clean_interpreter_has_no_side_effects():
    code = "import mailexpress, sys; print(sorted(m for m in sys.modules if m.startswith('mailexpress')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "mailexpress.testing" not in out   # the emulator is not loaded by default


def test_the_test_hooks_are_their_own_module_not_in_the_core():
    from mailexpress import _testhooks
    hooks = sorted(name for name in dir(_testhooks) if name.startswith("_") and not name.startswith("__"))
    assert "_reply_parse" in hooks and "_verdict" in hooks
    assert not [name for name in hooks if hasattr(_core, name)]
    assert callable(_core.tls_context)
