"""The SQLite journal of bulk runs (mailexpress.journal)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from email.message import EmailMessage
from pathlib import Path

import pytest

import mailexpress as mx
from mailexpress.client import SendResult
from mailexpress.errors import RecipientsRefused, SenderRefused, ServiceUnavailable
from mailexpress.journal import Journal, message_key, outcome_state
from mailexpress.reply import Reply, Stage

OK = Reply(250, "2.0.0", ("2.0.0 Ok: queued as 42",), Stage.END_OF_DATA)


def sent(mid: str = "<a@b>") -> SendResult:
    return SendResult(message_id=mid, envelope_from="a@corp.example", accepted=("x@y.example",),
                      refused={"z@y.example": Reply(550, "5.1.1", ("5.1.1 no such user",), Stage.RCPT)},
                      reply=OK, elapsed_ms=3)


def error(cls: type[mx.Error], delivered: bool | None, retry_safe: bool) -> mx.Error:
    err = cls("refused", stage=Stage.MAIL,
              reply=Reply(550, "5.7.1", ("5.7.1 Client does not have permissions",), Stage.MAIL))
    err.delivered = delivered       # type: ignore[attr-defined]
    err.retry_safe = retry_safe     # type: ignore[attr-defined]
    return err


def test_keys_from_id_or_content() -> None:
    assert message_key({"id": 17, "to": "a@b"}) == "17"
    a = message_key({"to": "a@b", "subject": "x", "body": "y"})
    assert a == message_key({"body": "y", "subject": "x", "to": "a@b"})   # order does not matter
    assert a != message_key({"to": "a@b", "subject": "x", "body": "z"})
    assert a.startswith("sha256:")
    msg = EmailMessage()
    msg["Subject"] = "hi"
    msg.set_content("body")
    assert message_key(msg) == message_key(msg) != message_key({"subject": "hi"})
    assert message_key({"attachments": [b"\x00" * 10]}) != message_key({"attachments": [b"\x01" * 10]})


def test_states_from_outcomes() -> None:
    assert outcome_state(sent()) == "sent"
    assert outcome_state(error(SenderRefused, False, False)) == "refused"
    assert outcome_state(error(ServiceUnavailable, False, True)) == "not_sent"
    assert outcome_state(error(mx.ConnectionLost, None, False)) == "unknown"


def test_round_trip_of_outcomes(tmp_path: Path) -> None:
    with Journal(str(tmp_path / "run.sqlite")) as j:
        j.mark_wire(["a", "b", "c"])
        assert {k: r.state for k, r in j.lookup(["a", "b", "c", "d"]).items()} == \
            {"a": "wire", "b": "wire", "c": "wire"}
        j.record([("a", sent()), ("b", error(SenderRefused, False, False)),
                  ("c", error(RecipientsRefused, False, False))])
    with Journal(str(tmp_path / "run.sqlite")) as j:
        rows = j.lookup(["a", "b", "c"])
        a = rows["a"].outcome()
        assert isinstance(a, SendResult) and a == sent()
        b = rows["b"].outcome()
        assert isinstance(b, SenderRefused) and b.reply is not None and b.reply.enhanced == "5.7.1"
        assert b.delivered is False and b.stage is Stage.MAIL   # type: ignore[attr-defined]
        assert any("journal" in n for n in b.__notes__)
        assert isinstance(rows["c"].outcome(), RecipientsRefused)
        assert rows["a"].final and rows["b"].final
        assert j.counts() == {"sent": 1, "refused": 2}


def test_attempts_count_each_time_on_the_wire(tmp_path: Path) -> None:
    with Journal(str(tmp_path / "j.sqlite")) as j:
        j.mark_wire(["k"])
        j.record([("k", error(ServiceUnavailable, False, True))])
        j.mark_wire(["k"])
        row = j.lookup(["k"])["k"]
        assert (row.state, row.attempts) == ("wire", 2)
        out = row.outcome()
        assert isinstance(out, mx.Error) and out.delivered is None   # type: ignore[attr-defined]
        assert "resend_unknown" in str(out)
        assert j.unknown() == ["k"]


def test_not_a_journal_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("these are not the droids\n" * 100)
    with pytest.raises(mx.ConfigError, match="journal") as info:
        Journal(str(bad))
    assert info.value.key == "journal"   # type: ignore[attr-defined]


def test_survives_sigkill_right_after_a_commit(tmp_path: Path) -> None:
    path = tmp_path / "killed.sqlite"
    child = textwrap.dedent(f"""
        import os, signal
        from mailexpress.journal import Journal
        j = Journal({str(path)!r})
        j.mark_wire([f"m{{i}}" for i in range(1000)])
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", child], cwd=os.getcwd(), timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with Journal(str(path)) as j:
        assert j.counts() == {"wire": 1000}
        assert len(j.unknown()) == 1000


def test_a_kept_record_encodes_as_its_send_result() -> None:
    from mailexpress.journal import outcome_json, record_state_json
    from mailexpress.results import expand, record

    ok = Reply(250, "2.0.0", ("queued",), Stage.END_OF_DATA)
    no = Reply(550, "5.1.1", ("no such user",), Stage.RCPT)
    for rec in (record("a@x.example", ["b@y.example"], "<m1@x>", {}, ok, 3),
                record("a@x.example", ["b@y.example", "c@y.example"], None, {"c@y.example": no}, ok, 0)):
        state, text = record_state_json(rec)
        assert state == "sent" and json.loads(text) == json.loads(outcome_json(expand(rec)))
    err = mx.SenderRefused("refused", reply=no)
    assert record_state_json(err) == ("refused", outcome_json(err))
