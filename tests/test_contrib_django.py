"""mailexpress.contrib.django.EmailBackend with Django's own test machinery
(SimpleTestCase, override_settings) against the connector emulator."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from unittest import mock

import django
from django.conf import settings

if not settings.configured:
    settings.configure(EMAIL_BACKEND="mailexpress.contrib.django.EmailBackend",
                       DEFAULT_FROM_EMAIL="svc-mailer@corp.example", USE_TZ=True)
    django.setup()

import pytest  # noqa: E402
from django.core import mail  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.test import SimpleTestCase, override_settings  # noqa: E402
from support import SVC  # noqa: E402

import mailexpress as mx  # noqa: E402
from mailexpress.contrib.django import EmailBackend  # noqa: E402
from mailexpress.testing import ConnectorEmulator  # noqa: E402

BACKEND = "mailexpress.contrib.django.EmailBackend"


class BackendTests(SimpleTestCase):
    em: ConnectorEmulator
    settings_dict: dict[str, Any]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.em = ConnectorEmulator(users=[SVC]).start()
        cls.settings_dict = {
            "host": "127.0.0.1", "port": cls.em.port, "ca_file": cls.em.ca_file,
            "username": SVC.username, "password": SVC.password,
            "timeouts": {"connect": 5, "mail": 10, "end_of_data": 10},
        }

    @classmethod
    def tearDownClass(cls) -> None:
        cls.em.stop()
        super().tearDownClass()

    def setUp(self) -> None:
        self.em.messages.clear()
        # (tests/interop/test_django.py may have configured Django first, in the same process)
        self.enterContext(override_settings(MAILEXPRESS=self.settings_dict, EMAIL_BACKEND=BACKEND,
                                            DEFAULT_FROM_EMAIL="svc-mailer@corp.example"))

    def test_send_mail(self) -> None:
        n = mail.send_mail("Hello", "Body text, grüße", "svc-mailer@corp.example", ["bob@partner.example"])
        self.assertEqual(n, 1)
        (got,) = self.em.messages
        self.assertEqual(got.mail_from, "svc-mailer@corp.example")
        self.assertEqual(got.rcpt_tos, ["bob@partner.example"])
        self.assertTrue(got.tls)
        self.assertEqual(got.message["Subject"], "Hello")
        self.assertIn("grüße", got.message.get_content())

    def test_multi_alternatives_attachments_cc_bcc_reply_to(self) -> None:
        msg = mail.EmailMultiAlternatives(
            subject="Report", body="plain text", from_email="Payroll <payroll@corp.example>",
            to=["Bob <bob@partner.example>"], cc=["carol@partner.example"],
            bcc=["audit@corp.example"], reply_to=["helpdesk@corp.example"])
        msg.attach_alternative("<p>html text</p>", "text/html")
        msg.attach("report.csv", "a,b\n1,2\n", "text/csv")
        msg.attach("blob.bin", bytes(range(256)), "application/octet-stream")
        self.assertEqual(mail.get_connection().send_messages([msg]), 1)
        (got,) = self.em.messages
        self.assertEqual(got.mail_from, "payroll@corp.example")
        self.assertEqual(sorted(got.rcpt_tos),
                         ["audit@corp.example", "bob@partner.example", "carol@partner.example"])
        parsed = got.message
        self.assertNotIn("Bcc", parsed)
        self.assertNotIn(b"audit@corp.example", got.data)
        self.assertEqual(parsed["Cc"], "carol@partner.example")
        self.assertEqual(parsed["Reply-To"], "helpdesk@corp.example")
        self.assertEqual(parsed["From"], "Payroll <payroll@corp.example>")
        html = parsed.get_body(preferencelist=("html",))
        assert html is not None
        self.assertIn("<p>html text</p>", html.get_content())
        files = {p.get_filename(): p.get_content() for p in parsed.iter_attachments()}
        self.assertEqual(files["blob.bin"], bytes(range(256)))
        self.assertEqual(files["report.csv"].replace("\r\n", "\n"), "a,b\n1,2\n")

    def test_many_messages_one_connection(self) -> None:
        before = self.em.connections
        msgs = [mail.EmailMessage(f"n{i}", "b", "svc-mailer@corp.example", [f"u{i}@partner.example"])
                for i in range(5)]
        msgs.append(mail.EmailMessage("nobody", "b", "svc-mailer@corp.example", []))  # no recipients
        self.assertEqual(mail.get_connection().send_messages(msgs), 5)
        self.assertEqual(self.em.connections - before, 1)
        self.assertEqual([m.message["Subject"] for m in self.em.messages], [f"n{i}" for i in range(5)])

    def test_open_connection_is_reused_until_closed(self) -> None:
        before = self.em.connections
        with mail.get_connection() as conn:
            conn.send_messages([mail.EmailMessage("a", "b", None, ["bob@partner.example"])])
            conn.send_messages([mail.EmailMessage("c", "d", None, ["bob@partner.example"])])
            self.assertIsNotNone(conn.session)
        self.assertIsNone(conn.session)
        self.assertEqual(self.em.connections - before, 1)
        self.assertEqual(self.em.messages[0].mail_from, "svc-mailer@corp.example")  # DEFAULT_FROM_EMAIL

    def test_refused_message_raises_after_the_others_went(self) -> None:
        msgs = [mail.EmailMessage("ok1", "b", "svc-mailer@corp.example", ["bob@partner.example"]),
                mail.EmailMessage("bad", "b", "ceo@elsewhere.example", ["bob@partner.example"]),
                mail.EmailMessage("ok2", "b", "svc-mailer@corp.example", ["bob@partner.example"])]
        with self.assertRaises(mx.SenderRefused) as ctx:
            mail.get_connection().send_messages(msgs)
        self.assertIn("message 1 of 3; 1 failed in all", getattr(ctx.exception, "__notes__", []))
        self.assertEqual([m.message["Subject"] for m in self.em.messages], ["ok1", "ok2"])
        self.em.messages.clear()
        self.assertEqual(mail.get_connection(fail_silently=True).send_messages(msgs), 2)

    def test_connection_failure(self) -> None:
        closed = {**self.settings_dict, "port": _closed_port()}
        with override_settings(MAILEXPRESS=closed):
            with self.assertRaises(mx.ConnectError):
                mail.send_mail("s", "b", None, ["bob@partner.example"])
            self.assertEqual(mail.send_mail("s", "b", None, ["bob@partner.example"], fail_silently=True), 0)

    def test_config_file_and_environment(self) -> None:
        toml = Path(self.enterContext(_tmpdir())) / "mailexpress.toml"
        toml.write_text(f'host = "127.0.0.1"\nport = 1\nca_file = "{self.em.ca_file}"\n'
                        f'username = "{SVC.username}"\npassword_env = "DJ_MAIL_PW"\n')
        env = {"DJ_MAIL_PW": SVC.password, "MAILEXPRESS_PORT": str(self.em.port)}
        with override_settings(MAILEXPRESS=None, MAILEXPRESS_CONFIG=str(toml)), \
                mock.patch.dict(os.environ, env):
            backend = mail.get_connection()
            self.assertEqual(backend.config.port, self.em.port)      # the environment wins over the file
            self.assertEqual(backend.config.sources["port"], "env:MAILEXPRESS_PORT")
            self.assertEqual(mail.send_mail("from file", "b", None, ["bob@partner.example"]), 1)
        # the MAILEXPRESS dict wins over the environment, as load_config's keywords do
        with override_settings(MAILEXPRESS={**self.settings_dict, "port": self.em.port}), \
                mock.patch.dict(os.environ, {"MAILEXPRESS_PORT": "1"}):
            self.assertEqual(mail.get_connection().config.port, self.em.port)

    def test_bad_settings_are_improperly_configured(self) -> None:
        with override_settings(MAILEXPRESS=None):
            with self.assertRaisesMessage(ImproperlyConfigured, "MAILEXPRESS_CONFIG"):
                mail.get_connection()
        with override_settings(MAILEXPRESS={**self.settings_dict, "prot": 1}):
            with self.assertRaisesMessage(ImproperlyConfigured, "prot"):
                mail.get_connection()
        with override_settings(MAILEXPRESS={**self.settings_dict, "password": "wrong"}):
            with self.assertRaises(mx.AuthError) as ctx:
                mail.send_mail("s", "b", None, ["bob@partner.example"])
            self.assertNotIn("wrong", str(ctx.exception))

    def test_config_argument(self) -> None:
        cfg = self.em.config(username=SVC.username, password=SVC.password)
        backend = mail.get_connection(BACKEND, config=cfg)
        self.assertIsInstance(backend, EmailBackend)
        self.assertIs(backend.config, cfg)
        self.assertEqual(mail.send_mail("s", "b", "svc-mailer@corp.example", ["bob@partner.example"],
                                        connection=backend), 1)


def _closed_port() -> int:
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def _tmpdir() -> Any:
    import tempfile
    return tempfile.TemporaryDirectory()


def test_settings_are_configured_here() -> None:
    """The tests above ran with Django configured by this module (not skipped)."""
    assert settings.configured and settings.EMAIL_BACKEND == BACKEND
    with pytest.raises(ImproperlyConfigured):
        EmailBackend()
