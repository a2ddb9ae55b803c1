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
    for name, attr in (("item", "render_items"), ("row", "render_rows")):
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
    p = compose.prepare_item({"to": "a@x.example", "subject": "s", "headers": {"X-A": "1"}},
                             sender="a@corp.example", reply_to=None, eight_bit=True, utf8=False)
    assert rendered["item"] == 0 and b"X-A: 1\r\n" in p.data
    assert mime.make_message_id("x") != p.message_id


def test_the_renderer_keeps_no_references_and_no_memory():
    # every way out of the C calls: rendered, declined (None), and errors
    # raised for bad arguments; the inputs' reference counts stay as they
    # were and memory traced by tracemalloc (the raw domain too) stays flat
    import gc
    import sys
    import tracemalloc
    t = mx.Template(to="{name} <{email}>", subject="S {n}", body="Dear {name}\n", html="<p>{n}</p>")
    c = t._compiled_for(True, False)
    consts = t._consts(c, "a@corp.example", None)
    iconsts = compose._render_consts("a@corp.example", None)
    assert consts is not None and iconsts is not None
    name, body = "Customer " + str(7), "x" * 2000 + "\n"
    rows = [{"name": name, "email": "c@x.example", "n": 12345678901234567890},
            {"name": "Jörg", "email": "c@x.example", "n": 1},            # declined
            {"name": name, "email": "c@x.example"}]                        # no n: declined
    items = [{"to": ["c@x.example", "Ann <a@x.example>"], "subject": "s", "body": body},
             {"to": "c@x.example", "subject": "\r", "body": body}]          # refused
    watched = [name, body, rows[0], items[0], consts, iconsts, c.spec]
    gc.collect()        # earlier tests' garbage (tracebacks' frames) may hold some of them
    before = [sys.getrefcount(o) for o in watched]
    date, prepared = mime.date_header(), compose.Prepared

    def once() -> None:
        _core.render_rows(c.spec, consts, rows, date, mime._counter, mime._id_prefix, True, prepared)
        _core.render_items(iconsts, items, date, mime._counter, mime._id_prefix, False, prepared)
        one, two = [rows[0]], [rows[0], rows[0]]
        for bad in ((c.spec, consts, one, date, mime._counter, "not bytes", True, prepared),
                    ((1, 2, 3), consts, one, date, mime._counter, mime._id_prefix, True, prepared),
                    (c.spec, consts, rows[0], date, mime._counter, mime._id_prefix, True, prepared),
                    (c.spec, consts, one, date, iter(()), mime._id_prefix, True, prepared),
                    # the first row rendered, the second's Message-ID number missing: the
                    # list made so far is freed with the error
                    (c.spec, consts, two, date, iter([7]), mime._id_prefix, True, prepared)):
            try:
                _core.render_rows(*bad)
            except (TypeError, RuntimeError):
                pass
            else:
                raise AssertionError(f"no error for {bad!r}")
        try:
            _core.render_items(iconsts, items[0], date, mime._counter, mime._id_prefix, False, prepared)
        except TypeError:
            pass
        else:
            raise AssertionError("render_items took a mapping for a list")

    for _ in range(200):
        once()
    tracemalloc.start()
    try:
        gc.collect()
        first, _peak = tracemalloc.get_traced_memory()
        for _ in range(2000):
            once()
        gc.collect()
        last, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [sys.getrefcount(o) for o in watched] == before
    assert last - first < 16 * 1024, f"{last - first} bytes kept after 2,000 rounds"


def test_prepare_many_takes_any_row_and_gives_each_its_outcome():
    from collections import OrderedDict
    t = mx.Template(to="{email}", subject="S {n}", body="hi {n}\n")
    rows = [{"email": "a@x.example", "n": 1}, ["not", "a", "mapping"],
            OrderedDict(email="b@x.example", n=2), {"email": "c@x.example"}]
    got = t.prepare_many(rows, sender="s@corp.example", reply_to=None, eight_bit=True, utf8=False)
    assert isinstance(got[0], compose.Prepared) and isinstance(got[2], compose.Prepared)
    assert isinstance(got[1], mx.InputError) and "mapping" in str(got[1])
    assert isinstance(got[3], mx.InputError) and "'n'" in str(got[3])
    assert got[2].recipients == ["b@x.example"] and got[2].data.endswith(b"hi 2\r\n")
