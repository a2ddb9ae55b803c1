"""The Django backend against the real Postfix + Dovecot (see harness.py):
Django's own messages, submitted with STARTTLS and AUTH, delivered."""
from __future__ import annotations

import email
import email.policy
import time

import django
from django.conf import settings

if not settings.configured:
    settings.configure(EMAIL_BACKEND="mailexpress.contrib.django.EmailBackend",
                       DEFAULT_FROM_EMAIL="svc-domain@corp.example", USE_TZ=True)
    django.setup()

from django.core import mail  # noqa: E402
from django.test import override_settings  # noqa: E402
from harness import ACCOUNTS  # noqa: E402

BACKEND = "mailexpress.contrib.django.EmailBackend"


def test_django_messages_are_delivered_by_postfix(postfix):  # type: ignore[no-untyped-def]
    password, _address = ACCOUNTS["svc-domain"]
    conf = {"host": "127.0.0.1", "port": postfix.ports["submission"], "ca_file": postfix.ca_file,
            "username": "svc-domain", "password": password, "security": "starttls",
            "timeouts": {"connect": 5, "mail": 10, "rcpt": 10, "end_of_data": 60}}
    msg = mail.EmailMultiAlternatives(
        subject="django-interop-1", body="plain part", from_email="Payroll <payroll@corp.example>",
        to=["bob@partner.example"], cc=["carol@partner.example"], bcc=["audit@corp.example"],
        reply_to=["helpdesk@corp.example"])
    msg.attach_alternative("<p>html part</p>", "text/html")
    msg.attach("data.bin", bytes(range(256)) * 4, "application/octet-stream")
    refused = mail.EmailMessage("django-interop-2", "b", "ceo@elsewhere.example", ["bob@partner.example"])
    with override_settings(EMAIL_BACKEND=BACKEND, MAILEXPRESS=conf):
        with mail.get_connection(fail_silently=True) as conn:
            assert conn.config.username == "svc-domain"
            # svc-domain may send as any @corp.example address, not as an external one
            assert conn.send_messages([msg, refused]) == 1
    got = postfix.wait_for(b"django-interop-1").data
    parsed = email.message_from_bytes(got, policy=email.policy.default)
    assert parsed["From"] == "Payroll <payroll@corp.example>"
    assert parsed["Cc"] == "carol@partner.example" and parsed["Reply-To"] == "helpdesk@corp.example"
    assert "Bcc" not in parsed and b"audit@corp.example" not in got.split(b"\n\n", 1)[1]
    files = {p.get_filename(): p.get_content() for p in parsed.iter_attachments()}
    assert files["data.bin"] == bytes(range(256)) * 4
    # one copy per envelope recipient, the Bcc one included
    # one copy per envelope recipient (virtual(8) adds Delivered-To), the Bcc one included
    deadline = time.monotonic() + 20
    while True:
        copies = [email.message_from_bytes(m.data, policy=email.policy.default)
                  for m in postfix.delivered() if b"django-interop-1" in m.data]
        if len(copies) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert sorted(c["Delivered-To"] for c in copies) == [
        "audit@corp.example", "bob@partner.example", "carol@partner.example"]
    assert all("Bcc" not in c for c in copies)
    assert not any(b"django-interop-2" in m.data for m in postfix.delivered())
