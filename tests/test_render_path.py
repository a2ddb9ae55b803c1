"""send_many's ordinary messages go through the C renderer, end to end.

The renderer's bytes are checked against the Python builder in
tests/test_mime.py; this checks that send_many actually takes that path for
the messages it is meant for (a regression to the Python builder would keep
every byte and lose the speed), and that what arrives is those bytes: the
real emulator on loopback, dot-unstuffed on arrival."""
from __future__ import annotations

import re

import pytest
from support import SVC

import mailexpress as mx
from mailexpress import _core, compose, mime

MID_DATE = re.compile(rb"(?m)^(Date|Message-ID): [^\r]*\r\n")


@pytest.fixture
def rendered(monkeypatch):
    """How many messages each of the C renderer's entry points rendered
    (the real functions run; only their results are counted)."""
    counts = {"item": 0, "row": 0}

    def spy(name, real):
        def call(*args):
            got = real(*args)
            if isinstance(got, list):
                counts[name] += sum(p is not None for p in got)
            elif got is not None:
                counts[name] += 1
            return got
        return call
    for name, attr in (("item", "render_item"), ("item", "render_items"), ("row", "render_row"),
                       ("row", "render_rows")):
        monkeypatch.setattr(_core, attr, spy(name, getattr(_core, attr)))
    return counts


def test_send_many_renders_ordinary_mappings_in_c(emulator_factory, rendered):
    em = emulator_factory()
    cfg = em.config(username=SVC.username, password=SVC.password, from_address=SVC.address)
    items = [{"to": f"user{i}@partner.example", "subject": f"Statement {i}",
              "body": ".leading dot\nline two\n"} for i in range(30)]
    items.append({"to": "user@partner.example", "subject": "Grüße", "body": "x"})   # Python's
    result = mx.send_many(cfg, items)
    assert len(result.sent) == 31
    assert rendered["item"] == 30
    for i, got in enumerate(em.messages[:30]):
        want = compose.prepare(sender=SVC.address, eight_bit=True, **items[i])
        assert MID_DATE.sub(b"", got.data) == MID_DATE.sub(b"", want.data)
        assert got.rcpt_tos == [f"user{i}@partner.example"]
    assert b"=?utf-8?" in em.messages[30].data


def test_send_many_renders_template_rows_in_c(emulator_factory, rendered):
    em = emulator_factory()
    cfg = em.config(username=SVC.username, password=SVC.password, from_address=SVC.address)
    t = mx.Template(to="{name} <{email}>", subject="Invoice {number}",
                    body="Dear {name},\n.\ninvoice {number}\n", html="<p>{name}</p>")
    rows = [{"name": f"Customer {i}", "email": f"c{i}@partner.example", "number": i}
            for i in range(20)]
    result = mx.send_many(cfg, template=t, rows=rows)
    assert len(result.sent) == 20 and rendered["row"] == 20
    for i, got in enumerate(em.messages):
        msg = mime_parse(got.data)
        assert msg.get_content_type() == "multipart/alternative"
        assert msg.get_body(("plain",)).get_content() == f"Dear Customer {i},\r\n.\r\ninvoice {i}\r\n"
        assert got.rcpt_tos == [f"c{i}@partner.example"]
        assert msg["Message-ID"] == result[i].message_id


def mime_parse(data: bytes):   # type: ignore[no-untyped-def]
    import email.policy
    from email.parser import BytesParser
    return BytesParser(policy=email.policy.default).parsebytes(data)


def test_mime_builds_what_the_renderer_declines(rendered):
    p = compose.prepare_item({"to": "a@x.example", "subject": "s", "cc": ["c@x.example"]},
                             sender="a@corp.example", reply_to=None, eight_bit=True, utf8=False)
    assert rendered["item"] == 0 and b"Cc: c@x.example\r\n" in p.data
    assert mime.make_message_id("x") != p.message_id
