"""TLS: verification on by default, reasons named, peer details readable."""
from __future__ import annotations

import os
import ssl
import time
from pathlib import Path

import pytest
from support import SVC, plain_session

import mailexpress as mx


def test_tls_details_are_readable(cfg):
    with mx.connect(cfg) as s:
        assert s.tls_active and s.tls_version in ("TLSv1.2", "TLSv1.3")
        assert s.tls_cipher
        info = s.peer_cert_info
        assert info["verify_code"] == 0 and info["verify_message"] == "ok"
        assert "DNS:mail.corp.example" in info["san"] and "IP:127.0.0.1" in info["san"]
        assert info["not_before"] < time.time() < info["not_after"]
        der = s.peer_certificate
        assert ssl.DER_cert_to_PEM_cert(der).startswith("-----BEGIN CERTIFICATE-----")


def test_expired_certificate_is_refused_with_its_reason(emulator_factory):
    em = emulator_factory(certificate="expired")
    with pytest.raises(mx.CertificateError) as info:
        mx.connect(em.config(username=SVC.username, password=SVC.password))
    exc = info.value
    assert exc.verify_code == 10 and exc.verify_message == "certificate has expired"
    assert exc.stage is mx.Stage.STARTTLS and isinstance(exc, mx.TLSError)


def test_wrong_host_name_is_refused(emulator_factory):
    em = emulator_factory(certificate="wrong_host")
    with pytest.raises(mx.CertificateError) as info:
        mx.connect(em.config(username=SVC.username, password=SVC.password))
    # the config's host is 127.0.0.1, so OpenSSL checks the IP SAN
    assert info.value.verify_code == 64 and info.value.verify_message == "IP address mismatch"


def test_server_name_is_checked_not_just_the_chain(emulator):
    cfg = emulator.config(username=SVC.username, password=SVC.password, server_name="other-host.example")
    with pytest.raises(mx.CertificateError, match="hostname mismatch") as info:
        mx.connect(cfg)
    assert info.value.verify_code == 62
    ok = emulator.config(username=SVC.username, password=SVC.password, server_name="mail.corp.example")
    with mx.connect(ok) as s:
        assert s.tls_active


def test_unknown_ca_is_refused(emulator):
    cfg = emulator.config(username=SVC.username, password=SVC.password, ca_file=None)
    with pytest.raises(mx.CertificateError) as info:
        mx.connect(cfg)
    assert info.value.verify_code in (19, 20)  # self-signed in chain / unable to get issuer


def test_no_credentials_cross_a_failed_handshake(emulator_factory):
    em = emulator_factory(certificate="expired")
    with pytest.raises(mx.CertificateError):
        mx.connect(em.config(username=SVC.username, password=SVC.password))
    assert em.messages == []


def test_verify_off_connects_and_reports_the_problem(emulator_factory):
    em = emulator_factory(certificate="expired")
    cfg = em.config(username=SVC.username, password=SVC.password, verify=False)
    with mx.connect(cfg) as s:
        assert s.authenticated
        assert s.peer_cert_info["verify_message"] == "certificate has expired"


def test_minimum_tls_version_is_enforced(fake_server, certs):
    ctx = certs.server_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2

    def script(conn):
        conn.readline()
    srv = fake_server(script, tls=ctx)
    s = plain_session(srv.port, security="ssl", ca_file=certs.ca_file, min_tls_version="1.3")
    with pytest.raises(mx.TLSError) as info:
        s.connect()
    assert "version" in str(info.value).lower()


def test_client_certificate_is_presented(fake_server, certs, tmp_path):
    client = certs.ca.issue_cert("client.corp.example")
    cert_file = tmp_path / "client.pem"
    cert_file.write_bytes(b"".join(b.bytes() for b in client.cert_chain_pems) + client.private_key_pem.bytes())
    ctx = certs.server_context()
    ctx.verify_mode = ssl.CERT_REQUIRED
    certs.ca.configure_trust(ctx)
    seen = {}

    def script(conn):
        seen["peer"] = conn.sock.getpeercert()
        conn.send(b"220 ok\r\n")
        conn.readline()
    srv = fake_server(script, tls=ctx)
    s = plain_session(srv.port, security="ssl", ca_file=certs.ca_file, client_cert=str(cert_file))
    s.connect()
    s.close()
    assert ("DNS", "client.corp.example") in seen["peer"]["subjectAltName"]


def test_bad_ca_file_is_a_config_error(tmp_path, emulator):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    cfg = emulator.config(username=SVC.username, password=SVC.password, ca_file=str(bad))
    with pytest.raises(mx.ConfigError, match="ca_file"):
        mx.connect(cfg)


def test_sessions_of_one_config_share_one_tls_context(emulator):
    """The trust store is read once per TLS setting, not per connection."""
    cfg = emulator.config(username=SVC.username, password=SVC.password)
    a, b = cfg.session_kwargs()["tls_context"], cfg.session_kwargs()["tls_context"]
    assert a is b
    assert cfg.session_kwargs(verify=False)["tls_context"] is not a
    assert cfg.replace(security="none").session_kwargs()["tls_context"] is None
    for _ in range(2):
        with mx.connect(cfg) as s:
            assert s.tls_active and s.authenticated


def test_a_replaced_ca_file_is_read_anew(emulator, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_bytes(Path(emulator.ca_file).read_bytes())
    cfg = emulator.config(username=SVC.username, password=SVC.password, ca_file=str(ca))
    first = cfg.session_kwargs()["tls_context"]
    ca.write_text("not a certificate\n")
    os.utime(ca, ns=(1, 1))
    with pytest.raises(mx.ConfigError, match="ca.pem"):
        cfg.session_kwargs()
    assert first is not None
