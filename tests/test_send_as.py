"""send_as and Session.send against the connector emulator."""
from __future__ import annotations

import logging
import smtplib
from email.message import EmailMessage

import pytest
from support import ALL_PASSWORDS, ANY, SELF, SVC

import mailexpress as mx


def test_send_as_builds_from_reply_to_message_id_and_date(cfg, emulator):
    res = mx.send_as(cfg, "alice@corp.example", to=["bob@partner.example"], subject="Your package is ready",
                     body="Hello Bob\n", reply_to="helpdesk@corp.example")
    assert res.ok and res.accepted == ("bob@partner.example",) and res.refused == {}
    assert res.reply.code == 250 and res.reply.enhanced == "2.6.0"
    got = emulator.messages[-1]
    assert got.mail_from == "alice@corp.example" and got.rcpt_tos == ["bob@partner.example"]
    assert got.username == SVC.username and got.tls
    msg = got.message
    assert msg["From"] == "alice@corp.example"
    assert msg["Reply-To"] == "helpdesk@corp.example"
    assert msg["Subject"] == "Your package is ready"
    assert msg["Message-ID"] == res.message_id and res.message_id.endswith("@corp.example>")
    assert msg["Date"]
    assert msg.get_content() == "Hello Bob\n"


def test_sender_and_reply_to_default_from_config(emulator):
    cfg = emulator.config(username=SVC.username, password=SVC.password, from_address="noreply@corp.example",
                          reply_to_address="support@corp.example")
    mx.send_as(cfg, to="bob@partner.example", subject="s", body="b")
    msg = emulator.messages[-1].message
    assert msg["From"] == "noreply@corp.example" and msg["Reply-To"] == "support@corp.example"


def test_cc_and_bcc_are_envelope_recipients_but_bcc_is_not_a_header(cfg, emulator):
    mx.send_as(cfg, "alice@corp.example", to="a@partner.example", cc=["c@partner.example"],
               bcc=["hidden@partner.example"], subject="s", body="b")
    got = emulator.messages[-1]
    assert got.rcpt_tos == ["a@partner.example", "c@partner.example", "hidden@partner.example"]
    assert got.message["Cc"] == "c@partner.example"
    assert b"hidden@partner.example" not in got.data


def test_envelope_sender_can_differ_from_header(cfg, emulator):
    mx.send_as(cfg, "alice@corp.example", to="b@partner.example", envelope_from="bounces@corp.example",
               subject="s", body="b")
    got = emulator.messages[-1]
    assert got.mail_from == "bounces@corp.example" and got.message["From"] == "alice@corp.example"


def test_a_given_email_message_is_completed_not_changed(cfg, emulator):
    msg = EmailMessage()
    msg["Subject"] = "prepared"
    msg["To"] = "b@partner.example"
    msg.set_content("body\n")
    res = mx.send_as(cfg, "alice@corp.example", message=msg)
    assert msg["From"] is None and msg["Message-ID"] is None, "the caller's object was modified"
    got = emulator.messages[-1].message
    assert got["From"] == "alice@corp.example" and got["Message-ID"] == res.message_id
    assert emulator.messages[-1].rcpt_tos == ["b@partner.example"]


def test_bytes_are_sent_verbatim(cfg, emulator):
    raw = b"From: alice@corp.example\r\nSubject: raw\r\n\r\nline\r\n"
    res = mx.send_as(cfg, "alice@corp.example", to=["b@partner.example"], message=raw)
    assert emulator.messages[-1].data == raw and res.message_id is None


def test_html_alternative(cfg, emulator):
    mx.send_as(cfg, "alice@corp.example", to="b@partner.example", subject="s", body="text", html="<p>html</p>")
    msg = emulator.messages[-1].message
    assert msg.get_content_type() == "multipart/alternative"
    assert msg.get_body(("html",)).get_content().strip() == "<p>html</p>"


# -- bodies, byte-exact ---------------------------------------------------------

RAW_CASES = {
    "leading dots": (b"Subject: d\r\n\r\n.one\r\n..two\r\n.\r\nend\r\n",
                     b"Subject: d\r\n\r\n.one\r\n..two\r\n.\r\nend\r\n"),
    "bare LF": (b"Subject: lf\n\nline1\nline2\n", b"Subject: lf\r\n\r\nline1\r\nline2\r\n"),
    "bare CR": (b"Subject: cr\r\rline1\rline2\r", b"Subject: cr\r\n\r\nline1\r\nline2\r\n"),
    "no final newline": (b"Subject: nf\r\n\r\nno newline at the end", b"Subject: nf\r\n\r\nno newline at the end\r\n"),
    "8-bit text": ("Subject: 8\r\n\r\nGrüße aus Köln – ✓\r\n".encode(), "Subject: 8\r\n\r\nGrüße aus Köln – ✓\r\n".encode()),
    "dot after CR": (b"Subject: m\r\n\r\na\r.b\r\n", b"Subject: m\r\n\r\na\r\n.b\r\n"),
}


@pytest.mark.parametrize("name", list(RAW_CASES))
def test_bodies_arrive_byte_exact(cfg, emulator, name):
    data, expected = RAW_CASES[name]
    mx.send_as(cfg, "alice@corp.example", to=["b@partner.example"], message=data)
    assert emulator.messages[-1].data == expected


def test_8bit_body_declares_8bitmime_and_exact_size(cfg, emulator):
    data, expected = RAW_CASES["8-bit text"]
    mx.send_as(cfg, "alice@corp.example", to=["b@partner.example"], message=data)
    opts = emulator.messages[-1].mail_options
    assert "BODY=8BITMIME" in opts and f"SIZE={len(expected)}" in opts


def test_7bit_body_does_not_declare_8bitmime(cfg, emulator):
    data = b"Subject: a\r\n\r\nascii\r\n"
    mx.send_as(cfg, "alice@corp.example", to=["b@partner.example"], message=data)
    assert emulator.messages[-1].mail_options == [f"SIZE={len(data)}"]


def test_built_message_uses_8bit_only_when_offered(emulator_factory):
    for offered, ctes in ((True, {"8bit"}), (False, {"quoted-printable", "base64"})):
        em = emulator_factory(eight_bit_mime=offered)
        cfg = em.config(username=SVC.username, password=SVC.password)
        mx.send_as(cfg, "alice@corp.example", to="b@partner.example", subject="s", body="Grüße\n")
        got = em.messages[-1]
        assert got.message["Content-Transfer-Encoding"] in ctes
        assert got.message.get_content().replace("\r\n", "\n") == "Grüße\n"
        if not offered:
            assert all(b < 0x80 for b in got.data)


def test_non_ascii_address_uses_smtputf8(cfg, emulator):
    mx.send_as(cfg, "alice@corp.example", to=["jörg@partner.example"], subject="ü", body="x")
    got = emulator.messages[-1]
    assert got.rcpt_tos == ["jörg@partner.example"] and "SMTPUTF8" in got.mail_options


def test_non_ascii_address_without_smtputf8_fails_before_sending(emulator_factory):
    em = emulator_factory(smtputf8=False)
    cfg = em.config(username=SVC.username, password=SVC.password)
    with pytest.raises(mx.NotSupportedError, match="SMTPUTF8") as info:
        mx.send_as(cfg, "alice@corp.example", to=["jörg@partner.example"], message=b"x\r\n")
    assert info.value.stage is mx.Stage.MAIL and em.messages == []


def test_message_over_the_size_limit_is_not_sent(emulator_factory):
    em = emulator_factory(size_limit=1000)
    cfg = em.config(username=SVC.username, password=SVC.password)
    with pytest.raises(mx.NotSupportedError, match="at most 1000"):
        mx.send_as(cfg, "alice@corp.example", to=["b@partner.example"], message=b"x" * 2000)
    assert em.messages == []


# -- permissions ----------------------------------------------------------------

def test_external_sender_refused_without_accept_any_sender(cfg, emulator):
    with pytest.raises(mx.SenderRefused) as info:
        mx.send_as(cfg, "ceo@partner.example", to=["b@partner.example"], subject="s", body="b")
    exc = info.value
    assert exc.stage is mx.Stage.MAIL and exc.code == 550 and exc.enhanced == "5.7.1"
    assert isinstance(exc, smtplib.SMTPSenderRefused) and exc.smtp_code == 550
    assert exc.sender == "ceo@partner.example"
    assert not exc.transient and emulator.messages == []


def test_rights_model(emulator):
    cases = [(SELF, "svc-self@corp.example", True), (SELF, "alice@corp.example", False),
             (SVC, "alice@corp.example", True), (SVC, "x@partner.example", False),
             (ANY, "x@partner.example", True)]
    for user, sender, allowed in cases:
        cfg = emulator.config(username=user.username, password=user.password)
        if allowed:
            assert mx.send_as(cfg, sender, to="b@partner.example", subject="s", body="b").ok
        else:
            with pytest.raises(mx.SenderRefused):
                mx.send_as(cfg, sender, to="b@partner.example", subject="s", body="b")


def test_header_from_refused_at_end_of_data(emulator_factory):
    em = emulator_factory(check_header_from=True)
    cfg = em.config(username=SVC.username, password=SVC.password)
    with pytest.raises(mx.DataRefused) as info:
        mx.send_as(cfg, "alice@corp.example", to="b@partner.example", subject="s", body="b")
    assert info.value.stage is mx.Stage.END_OF_DATA and info.value.enhanced == "5.7.1"
    assert em.messages == []
    # its own address passes the same check
    assert mx.send_as(cfg, SVC.address, to="b@partner.example", subject="s", body="b").ok


def test_partly_refused_recipients_are_reported(emulator):
    cfg = emulator.config(use_auth=False, username=None, password=None, from_address=None)
    em = emulator
    em.allow_anonymous = True
    res = mx.send_as(cfg, "x@partner.example", to=["in@corp.example", "out@partner.example"],
                     subject="s", body="b")
    assert not res.ok and res.accepted == ("in@corp.example",)
    assert list(res.refused) == ["out@partner.example"]
    assert res.refused["out@partner.example"].enhanced == "5.7.54"
    assert em.messages[-1].rcpt_tos == ["in@corp.example"]


def test_all_recipients_refused_sends_no_body(emulator):
    emulator.allow_anonymous = True
    cfg = emulator.config(use_auth=False, username=None, password=None, from_address=None)
    with pytest.raises(mx.RecipientsRefused) as info:
        mx.send_as(cfg, "x@partner.example", to=["a@partner.example", "b@partner.example"], subject="s", body="b")
    assert set(info.value.recipients) == {"a@partner.example", "b@partner.example"}
    assert isinstance(info.value, smtplib.SMTPRecipientsRefused)
    assert emulator.messages == []


def test_anonymous_is_refused_by_default(emulator):
    cfg = emulator.config(use_auth=False, username=None, password=None, from_address=None)
    with pytest.raises(mx.SenderRefused) as info:
        mx.send_as(cfg, "x@corp.example", to="b@corp.example", subject="s", body="b")
    assert info.value.code == 530 and info.value.enhanced == "5.7.1"


# -- authentication -------------------------------------------------------------

def test_wrong_password_is_an_auth_error_without_the_password(emulator):
    cfg = emulator.config(username=SVC.username, password="wrong-password-123")
    with pytest.raises(mx.AuthError) as info:
        mx.send_as(cfg, SVC.address, to="b@partner.example", subject="s", body="b")
    exc = info.value
    assert exc.code == 535 and exc.enhanced == "5.7.3" and exc.stage is mx.Stage.AUTH
    assert isinstance(exc, smtplib.SMTPAuthenticationError)
    assert "wrong-password-123" not in str(exc) and "wrong-password-123" not in repr(exc)


@pytest.mark.parametrize("offered, used", [(("LOGIN",), "LOGIN"), (("PLAIN", "LOGIN"), "LOGIN"),
                                           (("PLAIN",), "PLAIN")])
def test_mechanism_is_chosen_from_what_is_offered(emulator_factory, offered, used):
    em = emulator_factory(auth_mechanisms=offered)
    cfg = em.config(username=SVC.username, password=SVC.password)
    res = mx.send_as(cfg, SVC.address, to="b@partner.example", subject="s", body="b")
    assert any(t.startswith(f"AUTH {used}") for _ms, d, t in res.transcript if d == "C")


def test_config_can_forbid_a_mechanism(emulator_factory):
    em = emulator_factory(auth_mechanisms=("PLAIN",))
    cfg = em.config(username=SVC.username, password=SVC.password, auth_mechanisms=["LOGIN"])
    with pytest.raises(mx.NotSupportedError, match="none of the allowed"):
        mx.send_as(cfg, SVC.address, to="b@partner.example", subject="s", body="b")


def test_basic_auth_off_is_reported(emulator_factory):
    # GSSAPI alone and no Kerberos ticket: nothing this config can use (with NTLM
    # offered too, mailexpress would authenticate with it)
    em = emulator_factory(auth_mechanisms=(), other_mechanisms=("GSSAPI",))
    cfg = em.config(username=SVC.username, password=SVC.password)
    with pytest.raises(mx.NotSupportedError, match="basic authentication is off") as info:
        mx.connect(cfg)
    assert info.value.stage is mx.Stage.AUTH


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_no_password_in_transcript_exceptions_or_logs(emulator_factory, caplog, mech):
    em = emulator_factory(auth_mechanisms=(mech,))
    caplog.set_level(logging.DEBUG, logger="mailexpress")
    cfg = em.config(username=SVC.username, password=SVC.password)
    res = mx.send_as(cfg, SVC.address, to="b@partner.example", subject="s", body="b")
    bad = em.config(username=ANY.username, password="not-" + ANY.password)
    with pytest.raises(mx.AuthError) as info:
        mx.send_as(bad, ANY.address, to="b@partner.example", subject="s", body="b")
    import base64
    secrets = [*ALL_PASSWORDS, "not-" + ANY.password]
    encoded = [base64.b64encode(p.encode()).decode() for p in secrets]
    plain = base64.b64encode(b"\0" + SVC.username.encode() + b"\0" + SVC.password.encode()).decode()
    haystack = "\n".join([repr(res.transcript), str(info.value), repr(info.value), caplog.text,
                          repr(cfg), str(cfg), repr(bad)])
    for s in [*secrets, *encoded, plain]:
        assert s not in haystack
    assert "<password redacted>" in caplog.text or "<credentials redacted>" in caplog.text


def test_credentials_never_sent_without_tls(emulator_factory):
    em = emulator_factory(security="none")
    cfg = em.config(username=SVC.username, password=SVC.password, allow_insecure_auth=False)
    with pytest.raises(mx.InsecureAuthError) as info:
        mx.connect(cfg)
    assert info.value.stage is mx.Stage.AUTH
    assert isinstance(info.value, mx.AuthError)


def test_insecure_auth_when_explicitly_allowed(emulator_factory):
    em = emulator_factory(security="none")
    cfg = em.config(username=SVC.username, password=SVC.password, allow_insecure_auth=True)
    res = mx.send_as(cfg, SVC.address, to="b@partner.example", subject="s", body="b")
    assert res.ok and not em.messages[-1].tls


def test_implicit_tls(emulator_factory):
    em = emulator_factory(security="ssl")
    cfg = em.config(username=SVC.username, password=SVC.password)
    res = mx.send_as(cfg, SVC.address, to="b@partner.example", subject="s", body="b")
    assert res.ok and em.messages[-1].tls
    assert not any(t == "STARTTLS" for _ms, _d, t in res.transcript)


# -- input safety ---------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("sender", "alice@corp.example\r\nRCPT TO:<x@y>"),
    ("to", "b@partner.example\nDATA"),
    ("to", "b@partner.example\x00"),
    ("envelope_from", "a@corp.example> SIZE=1"),
])
def test_injection_in_addresses_is_refused_before_sending(cfg, emulator, field, value):
    kwargs = {"sender": "alice@corp.example", "to": ["b@partner.example"], "subject": "s", "body": "b"}
    kwargs[field] = value if field != "to" else [value]
    with pytest.raises((mx.InputError, ValueError)) as info:
        mx.send_as(cfg, **kwargs)
    assert "nothing was sent" in str(info.value) or "control" in str(info.value) or "linefeed" in str(info.value)
    assert emulator.messages == []


@pytest.mark.parametrize("headers", [{"X-Evil": "a\r\nBcc: x@y"}, {"X-Bad\nName": "v"}, {"Bad:Name": "v"}])
def test_injection_in_headers_is_refused(cfg, emulator, headers):
    with pytest.raises(mx.InputError, match="nothing was sent"):
        mx.send_as(cfg, "alice@corp.example", to="b@partner.example", subject="s", body="b", headers=headers)
    assert emulator.messages == []


def test_subject_with_newline_is_refused(cfg, emulator):
    with pytest.raises(mx.InputError):
        mx.send_as(cfg, "alice@corp.example", to="b@partner.example", subject="a\r\nBcc: x@y", body="b")
    assert emulator.messages == []


def test_no_recipients_is_an_input_error(cfg):
    with pytest.raises(mx.InputError, match="no recipients"):
        mx.send_as(cfg, "alice@corp.example", to=[], subject="s", body="b")


# -- sessions -------------------------------------------------------------------

def test_one_connection_for_many_messages(cfg, emulator):
    with mx.connect(cfg) as session:
        for i in range(5):
            mx.send_as(cfg, "alice@corp.example", to="b@partner.example", subject=f"m{i}", body="b",
                       session=session)
        assert session.state == "READY"
    assert emulator.connections == 1 and len(emulator.messages) == 5
    assert session.state == "CLOSED"


def test_smtplib_style_sendmail_and_send_message(cfg, emulator):
    with mx.connect(cfg) as s:
        assert s.sendmail("alice@corp.example", ["b@partner.example"], "Subject: x\r\n\r\nhi\r\n") == {}
        msg = EmailMessage()
        msg["From"] = "alice@corp.example"
        msg["To"] = "c@partner.example"
        msg["Bcc"] = "d@partner.example"
        msg.set_content("x")
        assert s.send_message(msg) == {}
    assert emulator.messages[-1].rcpt_tos == ["c@partner.example", "d@partner.example"]
    assert b"d@partner.example" not in emulator.messages[-1].data


def test_jupyter_representations_hide_the_password(cfg, emulator):
    res = mx.send_as(cfg, "alice@corp.example", to="b@partner.example", subject="s", body="b")
    h = res._repr_html_()
    assert "<table>" in h and "b@partner.example" in h and "accepted" in h
    c = cfg._repr_html_()
    assert "<table>" in c and "********" in c and cfg.password.reveal() not in c
    assert "svc-mailer" in c


def test_raw_8bit_bytes_without_8bitmime_are_refused_before_sending(emulator_factory):
    """RFC 6152: no 8-bit data to a server that does not offer 8BITMIME."""
    em = emulator_factory(eight_bit_mime=False)
    cfg = em.config(username=SVC.username, password=SVC.password)
    with mx.connect(cfg) as s:
        with pytest.raises(mx.NotSupportedError, match="8BITMIME"):
            s.send("Subject: x\r\n\r\nGrüße\r\n".encode(), envelope_from=SVC.address,
                   recipients=["b@partner.example"])
        assert s.state == "READY"
        assert s.send(b"Subject: x\r\n\r\nplain\r\n", envelope_from=SVC.address,
                      recipients=["b@partner.example"]).ok
    assert len(em.messages) == 1
