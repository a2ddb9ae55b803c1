"""Wrong security mode for the port (issue 14, item 3), found within
seconds for connect, send_as and the CLI alike:

- security="ssl" against a port that speaks plain SMTP first: the 220 that
  arrives where a TLS ServerHello was expected is recognised (TLSError,
  wrong_mode="starttls"), not reported as "wrong version number";
- security="starttls" or "none" against an implicit-TLS port (silent until
  a ClientHello): after 3 s without a greeting a second connection sends a
  ClientHello; a TLS answer ends the wait (ConnectError, wrong_mode="ssl").
"""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
from fakeserver import BANNER

import mailexpress as mx


def _config(port: int, security: str, certs, **kw) -> mx.Config:  # type: ignore[no-untyped-def]
    # the banner timeout is long on purpose: the report must not wait for it
    return mx.Config(host="127.0.0.1", port=port, security=security, use_auth=False,
                     ca_file=certs.ca_file, ehlo_name="client.example",
                     from_address="svc@x.example",
                     timeouts={"banner": 60, "ehlo": 5, "tls": 10, "quit": 2}, **kw)


def _failing(call: str, cfg: mx.Config, exc_type: type[mx.Error]) -> tuple[mx.Error, float]:
    """mx.connect(cfg) or mx.send_as(cfg, ...) must raise exc_type: the
    exception and the seconds it took."""
    start = time.monotonic()
    with pytest.raises(exc_type) as info:
        if call == "connect":
            mx.connect(cfg)
        else:
            mx.send_as(cfg, to="b@y.example", subject="s", body="b")
    return info.value, time.monotonic() - start


def _plain(conn):  # type: ignore[no-untyped-def]
    conn.send(BANNER)
    conn.readline()


@pytest.mark.parametrize("call", ["connect", "send_as"])
def test_ssl_against_a_plain_smtp_port_says_use_starttls(fake_server, certs, call):
    srv = fake_server(_plain)
    exc, took = _failing(call, _config(srv.port, "ssl", certs), mx.TLSError)
    assert not isinstance(exc, mx.CertificateError)
    assert exc.wrong_mode == "starttls" and exc.stage is mx.Stage.TLS
    assert "speaks plain SMTP" in str(exc) and '"220 fake.example ESMTP"' in str(exc)
    assert "security = 'starttls'" in str(exc)
    assert "wrong version number" not in str(exc).lower()
    assert took < 5.0


def test_ssl_against_a_plain_port_that_greets_late(fake_server, certs):
    # the ClientHello goes out first; the 220 that comes after it is recognised too
    def script(conn):  # type: ignore[no-untyped-def]
        time.sleep(0.5)
        conn.send(BANNER)
        conn.readline()
    srv = fake_server(script)
    with pytest.raises(mx.TLSError) as info:
        mx.connect(_config(srv.port, "ssl", certs))
    assert info.value.wrong_mode == "starttls"


def test_a_real_tls_failure_has_no_wrong_mode(fake_server, certs):
    # a port that answers in TLS, but with a certificate the CA does not know
    srv = fake_server(lambda conn: conn.readline(), tls=certs.server_context())
    cfg = _config(srv.port, "ssl", certs).replace(ca_file=None)
    with pytest.raises(mx.TLSError) as info:
        mx.connect(cfg)
    assert getattr(info.value, "wrong_mode", None) is None


@pytest.mark.parametrize("security", ["starttls", "none"])
@pytest.mark.parametrize("call", ["connect", "send_as"])
def test_plain_against_an_implicit_tls_port_says_use_ssl(fake_server, certs, security, call):
    srv = fake_server(lambda conn: conn.readline(), tls=certs.server_context())
    exc, took = _failing(call, _config(srv.port, security, certs), mx.ConnectError)
    assert exc.wrong_mode == "ssl" and exc.stage is mx.Stage.CONNECT
    assert "speaks implicit TLS" in str(exc) and "security = 'ssl'" in str(exc)
    assert 2.9 <= took < 5.0


def test_a_plain_server_that_greets_late_is_waited_for_without_a_byte_out_of_turn(fake_server, certs):
    # Postfix postscreen style: the greeting comes after the probe window.
    # The probe goes on a second connection; the session's own connection
    # sends nothing before the 220.
    first_lines: list[bytes] = []

    def script(conn):  # type: ignore[no-untyped-def]
        time.sleep(4.0)
        conn.send(BANNER)
        line = conn.readline()
        first_lines.append(line)
        if line.startswith(b"QUIT"):
            conn.send(b"221 bye\r\n")
    srv = fake_server(script)
    s = mx.Session("127.0.0.1", srv.port, security="none", ehlo_name="client.example",
                   timeouts={"banner": 10, "quit": 5})
    start = time.monotonic()
    assert s.connect().code == 220
    assert 3.9 <= time.monotonic() - start < 6
    s.quit()
    deadline = time.monotonic() + 3
    while len(first_lines) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.connections == 2                  # the session's and the probe's
    assert b"QUIT\r\n" in first_lines             # the session's: QUIT came first
    assert any(not x.startswith(b"QUIT") for x in first_lines)   # the probe's ClientHello


def test_a_silent_port_that_is_not_tls_still_waits_for_the_banner_timeout(fake_server):
    def script(conn):  # type: ignore[no-untyped-def]
        conn.readline()
    srv = fake_server(script)
    s = mx.Session("127.0.0.1", srv.port, security="none", ehlo_name="client.example",
                   timeouts={"banner": 4.5})
    start = time.monotonic()
    with pytest.raises(mx.TimeoutError) as info:
        s.connect()
    assert 4.4 <= time.monotonic() - start < 6
    assert getattr(info.value, "wrong_mode", None) is None


def test_the_cli_names_the_fix(fake_server, certs, tmp_path):
    srv = fake_server(_plain)
    cfg = tmp_path / "mail.toml"
    cfg.write_text(f'host = "127.0.0.1"\nport = {srv.port}\nsecurity = "ssl"\nuse_auth = false\n'
                   f'ca_file = "{certs.ca_file}"\nfrom_address = "svc@x.example"\n')
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mailexpress", "send", "--config", str(cfg),
                           "--to", "b@y.example", "--subject", "s", "--body", "b"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "security = 'starttls'" in proc.stdout + proc.stderr
    assert time.monotonic() - start < 5.0


@pytest.mark.parametrize("security, port_speaks", [("ssl", "plain"), ("starttls", "tls")])
def test_the_report_names_the_mode_the_port_speaks(fake_server, certs, security, port_speaks):
    """test_connector within seconds: the check that ran fails with the
    security setting to use as its fix -- no certificate advice, no
    'client may be blocked' -- and the rest is skipped with the reason."""
    if port_speaks == "plain":
        def script(conn):  # type: ignore[no-untyped-def]
            conn.send(BANNER)
            conn.readline()
        srv = fake_server(script)
    else:
        srv = fake_server(lambda conn: conn.readline(), tls=certs.server_context())
    cfg = _config(srv.port, security, certs)
    start = time.monotonic()
    report = mx.test_connector(cfg)
    assert time.monotonic() - start < 5.0
    check = report.check("tls" if port_speaks == "plain" else "banner")
    assert check.status == "fail" and not report.ok
    want = "security = \"starttls\"" if port_speaks == "plain" else "security = \"ssl\""
    assert check.advice is not None and want in check.advice
    assert "certificate" not in check.advice.lower() and "blocked" not in check.advice.lower()
    assert report.check("auth").status == "skip" and "speaks" in report.check("auth").summary
