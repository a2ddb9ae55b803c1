"""The mailexpress command line."""
from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

from support import SVC

from mailexpress.cli import main


def test_demo_runs_offline_and_prints_no_password():
    proc = subprocess.run([sys.executable, "-m", "mailexpress", "demo"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "C: AUTH LOGIN" in out and "<password redacted>" in out
    assert "| From: alice@corp.example" in out and "| Reply-To: helpdesk@corp.example" in out
    assert "| ..this line starts with a dot" not in out and "| .this line starts with a dot" in out
    assert "refused as expected at MAIL: 550 5.7.1" in out


def test_send_command(emulator, capsys, monkeypatch):
    monkeypatch.setenv("SVC_PW", SVC.password)
    rc = main(["send", "--host", "127.0.0.1", "--port", str(emulator.port), "--username", SVC.username,
               "--password-env", "SVC_PW", "--from", "alice@corp.example", "--to", "b@partner.example",
               "--subject", "cli", "--body", "hello", "-v"])
    out = capsys.readouterr()
    # the emulator's CA is not trusted by default: a TLS failure, exit 2
    assert rc == 2 and "CertificateError" in out.err
    monkeypatch.setenv("MAILEXPRESS_CA_FILE", emulator.ca_file)
    rc = main(["send", "--host", "127.0.0.1", "--port", str(emulator.port), "--username", SVC.username,
               "--password-env", "SVC_PW", "--from", "alice@corp.example", "--to", "b@partner.example",
               "--subject", "cli", "--body", "hello", "-v"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "accepted: b@partner.example" in out.out and SVC.password not in out.out + out.err
    assert emulator.messages[-1].message["Subject"] == "cli"
    rc = main(["send", "--host", "127.0.0.1", "--port", str(emulator.port), "--username", SVC.username,
               "--password-env", "SVC_PW", "--from", "x@partner.example", "--to", "b@partner.example"])
    assert rc == 1 and "refused at MAIL" in capsys.readouterr().err


def test_send_with_bad_config_exits_2(capsys):
    assert main(["send", "--host", "h", "--to", "x@y.example"]) == 2
    assert "username" in capsys.readouterr().err


def test_config_init_writes_a_template_that_loads(tmp_path, capsys, monkeypatch):
    path = tmp_path / "mx.toml"
    assert main(["config", "init", str(path)]) == 0
    assert main(["config", "init", str(path)]) == 2          # no silent overwrite
    monkeypatch.setenv("SVC_MAILER_PASSWORD", "from-env")
    import mailexpress as mx
    cfg = mx.load_config(path, env={"SVC_MAILER_PASSWORD": "from-env"})
    assert cfg.host == "mail.corp.example" and cfg.password.reveal() == "from-env"
    assert cfg.sources["password"] == "env:SVC_MAILER_PASSWORD"
    text = path.read_text()
    from mailexpress.config import FIELDS
    for f in FIELDS:
        assert f.name in text, f.name


def test_config_show_masks_the_password_and_names_sources(tmp_path, capsys, monkeypatch):
    path = tmp_path / "mx.toml"
    path.write_text('host = "h.example"\nusername = "u"\npassword = "very-secret-pw"\n')
    for k in list(__import__("os").environ):
        if k.startswith("MAILEXPRESS_"):
            monkeypatch.delenv(k)
    assert main(["config", "show", "--config", str(path), "--port", "2525"]) == 0
    out = capsys.readouterr().out
    assert "very-secret-pw" not in out and "'********'" in out
    assert f"(file:{path})" in out and "2525  (argument)" in out
    assert main(["config", "show", "--config", str(path), "--json"]) == 0
    data = __import__("json").loads(capsys.readouterr().out)
    assert data["settings"]["password"] == "********" and data["sources"]["host"] == f"file:{path}"


def _test_connector_argv(emulator) -> list[str]:
    return [sys.executable, "-m", "mailexpress", "test-connector", "--host", "127.0.0.1",
            "--port", str(emulator.port), "--username", SVC.username, "--password-env", "SVC_PW",
            "--ca-file", emulator.ca_file, "--from-address", SVC.address]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")}
    env.update(SVC_PW=SVC.password, **extra)
    return env


def test_test_connector_probes_extra_senders(emulator):
    proc = subprocess.run(_test_connector_argv(emulator) + ["--sender", "alice@corp.example",
                                                            "--sender", "ceo@partner.example", "--json"],
                          capture_output=True, text=True, timeout=60, env=_env())
    report = json.loads(proc.stdout)
    verdicts = {s["address"]: s["verdict"] for s in report["senders"]}
    assert verdicts["alice@corp.example"] == "allowed"
    assert verdicts["ceo@partner.example"] == "refused_at_mail"


def test_colour_only_on_a_terminal(emulator):
    """Piped: plain text.  On a real terminal (a pty): ANSI colours, unless
    NO_COLOR is set or --color never."""
    piped = subprocess.run(_test_connector_argv(emulator), capture_output=True, text=True, timeout=60,
                           env=_env())
    assert "  PASS  " in piped.stdout and "\033[" not in piped.stdout

    def on_a_tty(*extra_args: str, **env: str) -> str:
        leader, follower = pty.openpty()
        proc = subprocess.Popen(_test_connector_argv(emulator) + list(extra_args), stdout=follower,
                                stderr=subprocess.DEVNULL, env=_env(**env))
        os.close(follower)
        out = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:          # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        os.close(leader)
        proc.wait(60)
        return out.decode()
    coloured = on_a_tty()
    assert "\033[32mPASS\033[0m" in coloured and "\033[32mOK\033[0m" not in piped.stdout
    assert "\033[" not in on_a_tty(NO_COLOR="1")
    assert "\033[" not in on_a_tty("--color", "never")
    forced = subprocess.run(_test_connector_argv(emulator) + ["--color", "always"], capture_output=True,
                            text=True, timeout=60, env=_env())
    assert "\033[32mPASS\033[0m" in forced.stdout


def test_send_json_keeps_stdout_one_document(emulator, capsys, monkeypatch):
    monkeypatch.setenv("SVC_PW", SVC.password)
    monkeypatch.setenv("MAILEXPRESS_CA_FILE", emulator.ca_file)
    rc = main(["send", "--host", "127.0.0.1", "--port", str(emulator.port), "--username", SVC.username,
               "--password-env", "SVC_PW", "--from", "alice@corp.example", "--to", "b@partner.example",
               "--subject", "json", "--body", "hello", "-v", "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    doc = json.loads(out.out)
    assert doc["accepted"] == ["b@partner.example"] and doc["reply"]["code"] == 250
    assert "C: MAIL FROM:<alice@corp.example>" in out.err and SVC.password not in out.out + out.err
