"""TLS session resumption against a real Postfix (harness.py): its tlsmgr
keeps the ticket keys, so a second connection offered the first one's
session (a TLS 1.3 ticket) resumes it instead of a full handshake."""
from __future__ import annotations

import pytest
from scenarios import cfg

import mailexpress as mx
from mailexpress import config as mx_config


@pytest.fixture(autouse=True)
def no_cached_sessions():
    """New shared TLS contexts (empty caches): the other interop tests
    connect to the same ports with the same settings."""
    mx_config._shared_tls_context.cache_clear()


@pytest.mark.parametrize("service", ["submission", "smtps"])
def test_the_second_connection_resumes(postfix, service):
    config = cfg(postfix, service)
    seen = []
    for _ in range(3):
        with mx.connect(config) as s:
            assert s.authenticated and s.tls_version == "TLSv1.3"
            assert s.peer_cert_info["verify_code"] == 0
            line = next(t for _ms, d, t in s.transcript if d == "*" and "TLS established" in t)
            seen.append((s.tls_resumed, line.endswith(", resumed")))
    assert seen == [(False, False), (True, True), (True, True)]


def test_send_as_and_send_many_deliver_over_resumed_sessions(postfix):
    config = cfg(postfix, "submission")
    mx.send_as(config, "svc-domain@corp.example", to="bob@partner.example",
               subject="resume-1", body="first, full handshake")
    postfix.wait_for(b"resume-1")
    result = mx.send_many(config, [{"to": "bob@partner.example", "subject": f"resume-bulk-{i}",
                                    "body": "b"} for i in range(6)],
                          limits={"messages_per_connection": 2})
    assert result.ok and result.connections == 3
    for i in range(6):
        postfix.wait_for(f"resume-bulk-{i}".encode())
    with mx.connect(config) as s:
        assert s.tls_resumed


def test_another_service_port_is_not_offered_the_session(postfix):
    # submission and submission_rcpt are one Postfix with one tlsmgr: the
    # ticket would be accepted on either port, so only the offer decides
    with mx.connect(cfg(postfix, "submission")) as s:
        s.noop()
    with mx.connect(cfg(postfix, "submission_rcpt")) as s:
        assert not s.tls_resumed
    with mx.connect(cfg(postfix, "submission")) as s:
        assert s.tls_resumed
