"""mailexpress.contrib.logging.MailHandler against the connector emulator."""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import SVC

import mailexpress as mx
from mailexpress.contrib.logging import MailHandler
from mailexpress.testing import ConnectorEmulator

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger(f"app.test.{time.monotonic_ns()}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    yield log
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()


def _handler(cfg: mx.Config, **kw: object) -> MailHandler:
    h = MailHandler(cfg, ["ops@corp.example", "oncall@corp.example"], **kw)  # type: ignore[arg-type]
    h.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    return h


def test_a_burst_becomes_one_message(emulator: ConnectorEmulator, cfg: mx.Config, logger: logging.Logger) -> None:
    h = _handler(cfg, max_records=100, max_seconds=0.5)
    logger.addHandler(h)
    for i in range(50):
        logger.error("disk %d is full", i)
    h.close()
    assert 1 <= len(emulator.messages) <= 2 and h.sent_messages == len(emulator.messages)
    first = emulator.messages[0]
    assert first.mail_from == SVC.address and first.rcpt_tos == ["ops@corp.example", "oncall@corp.example"]
    assert first.tls
    msg = first.message
    assert msg["Subject"].startswith("ERROR: disk 0 is full (+")
    text = "".join(m.message.get_content() for m in emulator.messages)
    assert all(f"disk {i} is full\n" in text for i in range(50))
    assert text.index("disk 3 is") < text.index("disk 4 is")


def test_max_records_splits_a_burst(emulator: ConnectorEmulator, cfg: mx.Config, logger: logging.Logger) -> None:
    h = _handler(cfg, max_records=10, max_seconds=60)
    logger.addHandler(h)
    for i in range(25):
        logger.warning("w%d", i)
    h.close()
    assert [m.message["Subject"] for m in emulator.messages] == [
        "WARNING: w0 (+9 more)", "WARNING: w10 (+9 more)", "WARNING: w20 (+4 more)"]


def test_emit_does_not_wait_for_a_slow_server(emulator_factory: Callable[..., ConnectorEmulator],
                                              logger: logging.Logger) -> None:
    em = emulator_factory(auth_delay=0.5)       # each connection takes half a second to log in
    h = _handler(em.config(username=SVC.username, password=SVC.password, from_address=SVC.address),
                 max_records=2, max_seconds=0.05)
    logger.addHandler(h)
    times = []
    for i in range(10):
        started = time.perf_counter()
        logger.error("slow %d", i)
        times.append(time.perf_counter() - started)
    assert max(times) < 0.05                    # vs 0.5 s per message on the server side
    assert len(em.messages) == 0                # the server had not taken any yet
    h.close()
    assert len(em.messages) == h.sent_messages >= 5
    text = "".join(m.message.get_content() for m in em.messages)
    assert all(f"slow {i}\n" in text for i in range(10))


def test_logging_shutdown_sends_what_is_queued(emulator: ConnectorEmulator, tmp_path: Path) -> None:
    toml = tmp_path / "mx.toml"
    toml.write_text(f'host = "127.0.0.1"\nport = {emulator.port}\nca_file = "{emulator.ca_file}"\n'
                    f'username = "{SVC.username}"\npassword_env = "LOG_MAIL_PW"\n'
                    f'from_address = "{SVC.address}"\n')
    script = (
        "import logging\n"
        "from mailexpress.contrib.logging import MailHandler\n"
        f"h = MailHandler({str(toml)!r}, 'ops@corp.example', max_seconds=600)\n"
        "logging.getLogger().addHandler(h)\n"
        "logging.error('the last words')\n"
        "print('exiting', flush=True)\n")          # no close(): logging.shutdown at exit
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILEXPRESS_")}
    env.update(LOG_MAIL_PW=SVC.password, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "exiting\n" and proc.stderr == ""
    (got,) = emulator.messages
    assert got.message["Subject"] == "ERROR: the last words"


def test_own_records_are_never_mailed(emulator: ConnectorEmulator, cfg: mx.Config) -> None:
    root = logging.getLogger()
    old_level = root.level
    h = _handler(cfg, max_seconds=0.2)
    root.addHandler(h)
    root.setLevel(logging.DEBUG)           # mailexpress logs each send at INFO, the transcript at DEBUG
    try:
        logging.getLogger("app").error("one record")
        h.close()
    finally:
        root.removeHandler(h)
        root.setLevel(old_level)
    (got,) = emulator.messages
    assert got.message["Subject"] == "ERROR: one record"
    assert "accepted" not in got.message.get_content()


def test_failures_are_reported_once_and_counted(logger: logging.Logger, capfd: pytest.CaptureFixture[str]) -> None:
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    cfg = mx.Config(host="127.0.0.1", port=port, security="starttls", username="u",
                    password=mx.Secret("hunter2-secret"), from_address="app@corp.example",
                    timeouts={"connect": 2})
    h = _handler(cfg, max_records=1, max_seconds=0)
    logger.addHandler(h)
    logger.error("first")
    logger.error("second")
    h.close()
    err = capfd.readouterr().err
    assert err.count("mailexpress MailHandler: could not mail 1 log record(s): ConnectError") == 1
    assert len(err.strip().splitlines()) == 1 and "hunter2" not in err
    assert h.failures == 2 and h.lost_records == 2 and h.sent_messages == 0


def test_a_full_queue_drops_and_says_so(emulator_factory: Callable[..., ConnectorEmulator],
                                        logger: logging.Logger) -> None:
    em = emulator_factory(auth_delay=0.2)
    h = _handler(em.config(username=SVC.username, password=SVC.password, from_address=SVC.address),
                 max_records=1, max_seconds=0, queue_size=3)
    logger.addHandler(h)
    for i in range(30):
        logger.error("r%d", i)
    h.close()
    assert h.dropped >= 20
    assert len(em.messages) == 30 - h.dropped
    said = [int(n) for m in em.messages
            for n in re.findall(r"^\[(\d+) log record\(s\) were dropped", m.message.get_content(), re.M)]
    assert said and sum(said) <= h.dropped      # the last drops may come after the last message


def test_bad_arguments(cfg: mx.Config) -> None:
    with pytest.raises(mx.InputError, match="subject"):
        MailHandler(cfg, "ops@corp.example", subject="{nosuchfield}")
    with pytest.raises(mx.InputError, match="no recipient"):
        MailHandler(cfg, [])
    with pytest.raises(mx.InputError, match="max_records"):
        MailHandler(cfg, "ops@corp.example", max_records=0)
    with pytest.raises(mx.ConfigError):
        MailHandler("/nonexistent/mailexpress.toml", "ops@corp.example")


def test_subject_is_one_clean_line(emulator: ConnectorEmulator, cfg: mx.Config, logger: logging.Logger) -> None:
    h = _handler(cfg, max_seconds=0, subject="[{name}] {levelname}: {message}")
    logger.addHandler(h)
    logger.critical("line one\r\nBcc: evil@example.com\nline three" + "x" * 300)
    h.close()
    (got,) = emulator.messages
    subject = got.message["Subject"]
    assert "\n" not in subject and "\r" not in subject and subject.endswith("...")
    assert subject.startswith(f"[{logger.name}] CRITICAL: line one Bcc: evil@example.com line three")
    assert got.rcpt_tos == ["ops@corp.example", "oncall@corp.example"]
