"""TLS session resumption: a reconnect, an extra bulk lane or the next
send_as resumes the session (a TLS 1.3 ticket or a TLS 1.2 session) the
shared context cached, instead of a full handshake; only for the same host,
port, server name and verify setting; a server that refuses just gets a full
handshake.  The emulator's side of each handshake (em.tls_handshakes: did
it resume?) is Python's ssl server, checked against what the client says."""
from __future__ import annotations

import pytest
from support import SVC

import mailexpress as mx
from mailexpress.testing import ConnectorEmulator

VERSIONS = {  # name: (emulator knobs, config knobs, the version both agree on)
    "tls1.3": ({}, {"min_tls_version": "1.3"}, "TLSv1.3"),
    "tls1.2": ({"tls_max_version": "1.2"}, {}, "TLSv1.2"),
}


def config(em: ConnectorEmulator, **kw: object) -> mx.Config:
    return em.config(username=SVC.username, password=SVC.password, from_address=SVC.address, **kw)


def notices(n: int) -> list[dict[str, str]]:
    return [{"to": "bob@partner.example", "subject": f"notice {i}", "body": f"body {i}"}
            for i in range(n)]


def opened(kw: dict[str, object]) -> mx.Session:
    """A Session of session_kwargs, over STARTTLS, after the EHLO that
    follows it (its reply brings the TLS 1.3 tickets in)."""
    s = mx.Session(**kw)
    try:
        s.connect()
        s.starttls()
        s.ehlo()
    except BaseException:
        s.close_quietly()
        raise
    return s


def tls_line(s: mx.Session) -> str:
    return next(text for _ms, d, text in s.transcript if d == "*" and "TLS established" in text)


@pytest.mark.parametrize("security", ["starttls", "ssl"])
@pytest.mark.parametrize("version", list(VERSIONS))
def test_the_second_connection_resumes(emulator_factory, security, version):
    em_kw, cfg_kw, expected = VERSIONS[version]
    em = emulator_factory(security=security, **em_kw)
    cfg = config(em, **cfg_kw)
    seen = []
    for _ in range(3):
        with mx.connect(cfg) as s:
            assert s.authenticated and s.tls_version == expected
            # the snapshot of a resumed handshake still has the verified peer
            assert s.peer_cert_info["verify_code"] == 0 and s.peer_certificate
            seen.append((s.tls_resumed, tls_line(s).endswith(", resumed")))
    assert seen == [(False, False), (True, True), (True, True)]
    assert em.tls_handshakes == [False, True, True]


def test_send_as_on_a_new_connection_resumes(emulator_factory):
    em = emulator_factory()
    cfg = config(em)
    for i in range(3):
        mx.send_as(cfg, SVC.address, to=["bob@partner.example"], subject=f"s{i}", body="b")
    assert len(em.messages) == 3 and em.tls_handshakes == [False, True, True]


@pytest.mark.parametrize("version", list(VERSIONS))
def test_send_many_reconnects_resume(emulator_factory, version):
    em_kw, cfg_kw, _ = VERSIONS[version]
    em = emulator_factory(**em_kw)
    result = mx.send_many(config(em, **cfg_kw), notices(30), limits={"messages_per_connection": 10})
    assert result.ok and len(result.sent) == 30 and result.connections == 3
    assert em.tls_handshakes == [False, True, True]


def test_send_many_after_the_servers_421_resumes(emulator_factory):
    em = emulator_factory(max_messages_per_connection=5)
    result = mx.send_many(config(em), notices(20))
    assert result.ok and len(result.sent) == 20 and result.connections == 4
    assert em.tls_handshakes == [False, True, True, True]


def test_parallel_lanes_share_the_cache(emulator_factory):
    # four threads take, offer and store sessions (tickets arrive inside
    # their reads, GIL released) in one cache: run under ASan by .ci/sanitizers
    em = emulator_factory()
    result = mx.send_many(config(em), notices(60), connections=4,
                          limits={"messages_per_connection": 3})
    assert result.ok and len(result.sent) == 60
    assert sorted(m.message["Subject"] for m in em.messages) == sorted(f"notice {i}" for i in range(60))
    n = len(em.tls_handshakes)
    assert n == result.connections == 20
    # at most the first four (opened before any ticket came back) are full
    assert sum(em.tls_handshakes) >= n - 4


# -- offered only to the peer it came from ---------------------------------------------

def test_another_port_is_not_offered_the_session(emulator_factory, certs):
    # two servers with one server context: each would resume the other's
    # tickets, so a resumption on b could only come from an offer
    shared = certs.server_context()
    a = emulator_factory(tls_server_context=shared)
    b = emulator_factory(tls_server_context=shared)
    with mx.connect(config(a)) as s:
        assert not s.tls_resumed
    with mx.connect(config(b)) as s:
        assert not s.tls_resumed
    with mx.connect(config(a)) as s:
        assert s.tls_resumed
    assert a.tls_handshakes == [False, True] and b.tls_handshakes == [False]


def test_another_host_name_or_server_name_is_not_offered_the_session(emulator):
    with mx.connect(config(emulator)) as s:           # host 127.0.0.1, name checked: the IP
        assert not s.tls_resumed
    # the same server, by another host and by another name to check (both
    # in the certificate): the server would resume; the client must not offer
    with mx.connect(config(emulator, host="localhost", server_name="127.0.0.1")) as s:
        assert not s.tls_resumed
    with mx.connect(config(emulator, server_name="mail.corp.example")) as s:
        assert not s.tls_resumed
    with mx.connect(config(emulator)) as s:
        assert s.tls_resumed
    assert emulator.tls_handshakes == [False, False, False, True]


def test_a_session_made_without_verification_is_not_offered_to_a_verifying_one(emulator_factory):
    em = emulator_factory(certificate="expired")
    kw = config(em, verify=False).session_kwargs()
    with opened(kw) as s:                              # verify off: connects, cached
        assert s.tls_active and s.peer_cert_info["verify_code"] == 10
        assert not s.tls_resumed
    with opened(kw) as s:
        assert s.tls_resumed                           # the same settings resume
    # the same shared context, verify on: a resumption would skip the
    # certificate check; a full handshake refuses the expired certificate
    with pytest.raises(mx.CertificateError) as info:
        opened(dict(kw, verify=True))
    assert info.value.verify_code == 10
    assert em.tls_handshakes == [False, True]


def test_no_session_cache_means_full_handshakes(emulator):
    kw = config(emulator).session_kwargs()
    kw["tls_context"] = mx._core.tls_context(ca_file=emulator.ca_file, session_cache=False)
    for _ in range(2):
        with opened(kw) as s:
            assert s.tls_active and not s.tls_resumed
    assert emulator.tls_handshakes == [False, False]


def test_sessions_without_a_shared_context_make_full_handshakes(emulator):
    kw = config(emulator).session_kwargs()
    del kw["tls_context"]                              # each Session makes its own
    for _ in range(2):
        with opened(kw) as s:
            assert s.tls_active and not s.tls_resumed
    assert emulator.tls_handshakes == [False, False]


# -- a server that refuses ---------------------------------------------------------------

@pytest.mark.parametrize("version", list(VERSIONS))
def test_a_server_that_never_resumes_still_works(emulator_factory, version):
    em_kw, cfg_kw, _ = VERSIONS[version]
    em = emulator_factory(tls_resumption=False, **em_kw)
    result = mx.send_many(config(em, **cfg_kw), notices(9), limits={"messages_per_connection": 3})
    assert result.ok and len(result.sent) == 9
    assert em.tls_handshakes == [False, False, False]


@pytest.mark.parametrize("version", list(VERSIONS))
def test_refused_after_a_key_rotation_then_resumes_again(emulator_factory, version):
    em_kw, cfg_kw, _ = VERSIONS[version]
    em = emulator_factory(**em_kw)
    cfg = config(em, **cfg_kw)
    seen = []
    for step in range(4):
        if step == 2:
            em.rotate_tls_keys()
        with mx.connect(cfg) as s:
            seen.append(s.tls_resumed)
            assert s.authenticated
    assert seen == [False, True, False, True]
    assert em.tls_handshakes == seen


def test_diagnosis_reports_a_resumed_handshake(emulator):
    cfg = config(emulator)
    first, second = mx.test_connector(cfg), mx.test_connector(cfg)
    assert first.tls is not None and second.tls is not None
    assert first.tls["resumed"] is False and second.tls["resumed"] is True
    assert first.tls["verified"] and second.tls["verified"]
    evidence = next(c for c in second.checks if c.id == "tls").evidence
    assert any(", resumed" in line for line in evidence)
