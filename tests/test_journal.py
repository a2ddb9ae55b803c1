"""The SQLite journal of bulk runs (mailexpress.journal)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
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
        batch = j.mark_wire(["a", "b", "c"])
        assert {k: r.state for k, r in j.lookup(["a", "b", "c", "d"]).items()} == \
            {"a": "wire", "b": "wire", "c": "wire"}
        j.record([("a", sent()), ("b", error(SenderRefused, False, False)),
                  ("c", error(RecipientsRefused, False, False))], batch)
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
        first = j.mark_wire(["k"])
        j.record([("k", error(ServiceUnavailable, False, True))], first)
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


# -- one row per batch on the wire, outcomes after ----------------------------------------

def test_a_batch_is_one_row_until_its_outcomes_replace_it(tmp_path: Path) -> None:
    import sqlite3

    path = str(tmp_path / "j.sqlite")
    with Journal(path) as j:
        j.start_run()
        batch = j.mark_wire(["a", "b", "c"], [1, 2, 1])
        db = sqlite3.connect(path)
        assert db.execute("SELECT count(*) FROM batches").fetchone() == (1,)
        assert db.execute("SELECT count(*) FROM messages").fetchone() == (0,)
        assert j.counts() == {"wire": 3} and j.unknown() == ["a", "b", "c"]
        # "c" has no outcome (the engine stopped before it): its fate stays unknown
        j.finish(batch, [("a", sent(), 2), ("b", error(SenderRefused, False, False), 2)])
        assert db.execute("SELECT count(*) FROM batches").fetchone() == (0,)
        assert j.counts() == {"sent": 1, "refused": 1, "wire": 1} and j.unknown() == ["c"]
        db.close()


def test_outcomes_written_later_are_all_there_after_flush_and_close(tmp_path: Path) -> None:
    path = str(tmp_path / "j.sqlite")
    with Journal(path) as j:
        j.start_run()
        for n in range(20):
            b = j.mark_wire([f"m{n}.{i}" for i in range(50)], [1] * 50)
            j.finish_later(b, [(f"m{n}.{i}", sent(), 1) for i in range(50)])
        j.flush()
        assert j.counts() == {"sent": 1000}
        b = j.mark_wire(["last"], [1])
        j.finish_later(b, [("last", sent(), 1)])
    with Journal(path) as j:                 # close() waited for the last one
        assert j.counts() == {"sent": 1001}


def test_a_failure_to_record_stops_the_next_batch(tmp_path: Path) -> None:
    with Journal(str(tmp_path / "j.sqlite")) as j:
        j.start_run()
        b = j.mark_wire(["a"], [1])
        j.finish_later(b, [("a", object(), 1)])     # cannot be encoded: the writer fails
        with pytest.raises(mx.ConfigError, match="could not be recorded") as info:
            j.flush()
        assert info.value.key == "journal"   # type: ignore[attr-defined]
        b = j.mark_wire(["b"], [1])
        j.finish_later(b, [("b", object(), 1)])
        time.sleep(0.2)
        with pytest.raises(mx.ConfigError, match="could not be recorded"):
            j.mark_wire(["c"], [1])                  # before anything more goes on the wire
        assert "c" not in j.unknown()


def test_a_killed_writer_leaves_the_batch_unknown_never_absent(tmp_path: Path) -> None:
    path = tmp_path / "killed.sqlite"
    child = textwrap.dedent(f"""
        import os, signal
        from mailexpress.journal import Journal
        from mailexpress.client import SendResult
        from mailexpress.reply import Reply, Stage
        ok = SendResult("<m@x>", "a@x", ("b@y",), {{}}, Reply(250, "2.0.0", ("ok",), Stage.END_OF_DATA))
        j = Journal({str(path)!r})
        j.start_run()
        for n in range(200):
            b = j.mark_wire([f"m{{n}}.{{i}}" for i in range(10)], [1] * 10)
            j.finish_later(b, [(f"m{{n}}.{{i}}", ok, 1) for i in range(10)])
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", child], cwd=os.getcwd(), timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with Journal(str(path)) as j:
        counts = j.counts()
        # every message is sent or unknown: none is missing (it would be sent again)
        assert sum(counts.values()) == 2000 and set(counts) <= {"sent", "wire"}, counts
        assert len(j.unknown()) == counts.get("wire", 0)


# -- recipients of the last 24 hours -------------------------------------------------------

def test_recipients_of_the_last_24_hours_across_runs(tmp_path: Path) -> None:
    import sqlite3

    path = str(tmp_path / "j.sqlite")
    with Journal(path) as j:
        j.start_run()
        b = j.mark_wire(["a", "b", "c", "d"], [3, 2, 5, 7])
        j.finish(b, [("a", sent(), 3), ("b", error(SenderRefused, False, False), 2),
                     ("c", error(mx.ConnectionLost, None, False), 5),
                     ("d", error(ServiceUnavailable, False, True), 7)])
        now = time.time()
        # sent (3) and unknown (5) count; refused and not sent do not
        assert j.recipients_since(now - 3600) == 8
        assert j.mark_wire(["e"], [4]) and j.recipients_since(now - 3600) == 12   # on the wire
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE messages SET sent_at = sent_at - 90000 WHERE key = 'a'")   # 25 hours ago
    db.close()
    with Journal(path) as j:       # "e" was left on the wire: unknown, counted
        assert j.recipients_since(time.time() - 86400) == 5 + 4
        oldest = j.oldest_since(time.time() - 86400)
        assert oldest is not None and abs(oldest - now) < 60


def test_a_version_1_journal_is_upgraded_in_place(tmp_path: Path) -> None:
    import sqlite3

    path = str(tmp_path / "v1.sqlite")
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '1');
        CREATE TABLE messages (key TEXT PRIMARY KEY, state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0, outcome TEXT, updated REAL NOT NULL) WITHOUT ROWID;
        INSERT INTO messages VALUES ('old', 'wire', 1, NULL, 1.0);
    """)
    db.close()
    with Journal(path) as j:
        assert j.unknown() == ["old"] and j.recipients_since(0) == 0
        j.start_run()
        b = j.mark_wire(["new"], [2])
        j.finish(b, [("new", sent(), 2)])
        assert j.recipients_since(0) == 2 and j.counts() == {"wire": 1, "sent": 1}



def test_a_version_2_journal_is_upgraded_in_place_and_its_json_rows_still_read(tmp_path: Path) -> None:
    import sqlite3

    from mailexpress.journal import outcome_json

    path = str(tmp_path / "v2.sqlite")
    old = sent("<old@b>")
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '2');
        INSERT INTO meta VALUES ('runs', '4');
        CREATE TABLE messages (key TEXT NOT NULL UNIQUE, state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0, outcome TEXT, updated REAL NOT NULL,
            run INTEGER, sent_at REAL, rcpts INTEGER);
    """)
    db.execute("INSERT INTO messages VALUES ('old', 'sent', 1, ?, 1.0, 4, ?, 2)", (outcome_json(old), time.time()))
    db.commit()
    db.close()
    with Journal(path) as j:
        assert j.lookup(["old"])["old"].outcome() == old
        assert j.recipients_since(0) == 2
        assert j.start_run() == 5
        b = j.mark_wire(["new", "old"], [1, 1])
        j.finish(b, [("new", ("a@corp.example", "x@y.example", "<n@b>", OK, None, 7), 1),
                     ("old", error(ServiceUnavailable, False, True), 0)])
        rows = j.lookup(["new", "old"])
        assert rows["new"].outcome() == SendResult(message_id="<n@b>", envelope_from="a@corp.example",
                                                   accepted=("x@y.example",), refused={}, reply=OK,
                                                   elapsed_ms=7)
        assert rows["old"].state == "not_sent" and rows["old"].attempts == 2
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == ("3",)
    db.close()


def test_a_sent_row_in_columns_reads_back_as_its_json_twin(tmp_path: Path) -> None:
    """The usual sent message is written without JSON; it comes back equal to
    the outcome the JSON form gives (and to the SendResult it stands for)."""
    import sqlite3

    from mailexpress.results import expand, record

    ok = Reply(250, "2.0.0", ("Ok: queued as 4XyZ",), Stage.END_OF_DATA)
    no = Reply(550, "5.1.1", ("no such user",), Stage.RCPT)
    recs = {"plain": record("a@x.example", ["b@y.example"], "<m1@x>", {}, ok, 3),
            "no-id": record("a@x.example", ["b@y.example"], None, {}, ok, 0),
            "two": record("a@x.example", ["b@y.example", "c@y.example"], "<m2@x>", {"c@y.example": no}, ok, 5),
            "multi": record("a@x.example", ["b@y.example", "c@y.example"], "<m3@x>", {}, ok, 4)}
    path = str(tmp_path / "j.sqlite")
    with Journal(path) as j:
        j.start_run()
        b = j.mark_wire(list(recs), [1, 1, 2, 2])
        j.finish(b, [(k, r, 2 if k in ("two", "multi") else 1) for k, r in recs.items()])
        rows = j.lookup(list(recs))
        for key, rec in recs.items():
            assert rows[key].state == "sent" and rows[key].outcome() == expand(rec), key
        assert j.recipients_since(0) == 6
    db = sqlite3.connect(path)
    shapes = dict(db.execute("SELECT key, outcome IS NULL AND reply IS NOT NULL FROM messages"))
    db.close()
    assert shapes == {"plain": 1, "no-id": 1, "two": 0, "multi": 0}


def test_rows_of_both_shapes_keep_their_order_in_one_transaction(tmp_path: Path) -> None:
    """A message not sent in one batch and sent in the next, both written by one
    transaction: the later outcome wins, whatever the shape of each row."""
    with Journal(str(tmp_path / "j.sqlite")) as j:
        j.start_run()
        rec = ("a@corp.example", "x@y.example", "<m@b>", OK, None, 1)
        b1 = j.mark_wire(["m", "n"], [1, 1])
        b2 = j.mark_wire(["m"], [1])
        b3 = j.mark_wire(["n"], [1])
        j._finish([(b1, [("m", error(ServiceUnavailable, False, True), 0), ("n", rec, 1)], j.run),
                   (b2, [("m", rec, 1)], j.run),
                   (b3, [("n", error(ServiceUnavailable, False, True), 0)], j.run)])
        rows = j.lookup(["m", "n"])
        assert (rows["m"].state, rows["m"].attempts) == ("sent", 2)
        assert (rows["n"].state, rows["n"].attempts) == ("not_sent", 2)
        assert rows["n"].outcome_json is not None and rows["n"].reply_json is None   # the JSON row cleared the columns
        assert j.counts() == {"sent": 1, "not_sent": 1}

def test_the_check_for_a_key_taken_by_this_run_is_exact(tmp_path: Path) -> None:
    with Journal(str(tmp_path / "j.sqlite")) as j:
        first = j.start_run()
        b = j.mark_wire(["a"], [1])
        assert j.written_in_run("a") and not j.written_in_run("b")     # on the wire
        j.finish_later(b, [("a", sent(), 1)])
        assert j.written_in_run("a")                                   # written (after a flush)
        assert j.start_run() == first + 1
        assert not j.written_in_run("a")                               # an earlier run's
        j.take(["a"])
        assert j.written_in_run("a")


def test_seen_keys_find_repeats_in_bounded_memory() -> None:
    from mailexpress.seen import SeenKeys

    seen = SeenKeys()
    n = 200_000
    assert seen.add_many([f"k{i}" for i in range(n)], list(range(n))) == []
    assert len(seen) == n
    assert seen.nbytes() <= 24 * 2 * n          # 12 bytes a slot, at least a quarter full... or half
    assert seen.add("k17", n) == 17 and seen.add("k-new", n + 1) is None
    assert seen.add_many(["x", "k3", "x", "y"], [n + 2, n + 3, n + 4, n + 5]) == [(1, 3), (2, n + 2)]
    assert len(seen) == n + 3


# -- the writer's work: columns, its timing, its checkpoints -------------------------------

def test_a_batch_in_columns_keeps_each_rows_sender_reply_and_elapsed(tmp_path: Path) -> None:
    """Sender and reply are bound once when a batch shares them; rows that
    differ (another sender, distinct reply objects, a float elapsed) keep theirs."""
    from mailexpress.results import expand, record

    def reply(n: int) -> Reply:
        return Reply(250, "2.0.0", (f"2.0.0 Ok: queued as {n}",), Stage.END_OF_DATA)

    shared = [(f"s{i}", record("a@x.example", ["b@y.example"], f"<s{i}@x>", {}, OK, i), 1)
              for i in range(5)]
    mixed = [(f"m{i}", record(f"a{i % 2}@x.example", [f"b{i}@y.example"], f"<m{i}@x>", {}, reply(i), i + 0.7), 1)
             for i in range(5)]
    same_reply_other_senders = [(f"o{i}", record(f"o{i}@x.example", ["b@y.example"], None, {}, OK, 2), 1)
                                for i in range(3)]
    path = str(tmp_path / "j.sqlite")
    with Journal(path) as j:
        j.start_run()
        for rows in (shared, mixed, same_reply_other_senders):
            j.finish(j.mark_wire([k for k, _r, _n in rows], [1] * len(rows)), rows)
        keys = [k for rows in (shared, mixed, same_reply_other_senders) for k, _r, _n in rows]
        got = j.lookup(keys)
        for rows in (shared, mixed, same_reply_other_senders):
            for key, rec, _n in rows:
                want = expand(rec)
                outcome = got[key].outcome()
                assert isinstance(outcome, SendResult) and got[key].outcome_json is None, key
                assert outcome.elapsed_ms == int(want.elapsed_ms)
                assert outcome == SendResult(message_id=want.message_id, envelope_from=want.envelope_from,
                                             accepted=want.accepted, refused={}, reply=want.reply,
                                             elapsed_ms=int(want.elapsed_ms)), key
        assert j.counts() == {"sent": 13} and j.recipients_since(0) == 13


def test_outcomes_handed_over_are_written_without_a_next_batch_or_a_flush(tmp_path: Path) -> None:
    """The writer waits for the wire thread's next mark_wire (so as not to hold
    the journal when it comes), but a bounded time: the last batch of a paced
    run is committed though nothing follows it."""
    import sqlite3

    path = str(tmp_path / "j.sqlite")
    with Journal(path) as j:
        j.start_run()
        b = j.mark_wire(["a"], [1])
        j.finish_later(b, [("a", sent(), 1)])
        db = sqlite3.connect(path)
        deadline = time.monotonic() + 5
        while db.execute("SELECT count(*) FROM messages").fetchone() == (0,):
            assert time.monotonic() < deadline, "the outcome was never written"
            time.sleep(0.005)
        assert db.execute("SELECT count(*) FROM batches").fetchone() == (0,)
        db.close()


def test_the_writer_checkpoints_the_wal_and_mark_wire_never_does(tmp_path: Path) -> None:
    """SQLite's automatic checkpoint is off on the journal's connection (it ran
    in whichever commit crossed its threshold: often a mark_wire, on the wire
    thread); the writer checkpoints instead: the database file grows during
    the run, not only when the journal is closed."""
    path = tmp_path / "j.sqlite"
    with Journal(str(path)) as j:
        j.start_run()
        assert j._db.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        empty = path.stat().st_size
        for n in range(40):
            b = j.mark_wire([f"k{n}.{i}" for i in range(500)], [1] * 500)
            j.finish_later(b, [(f"k{n}.{i}", ("a@x.example", "b@y.example", f"<{n}.{i}@x>", OK, None, 1), 1)
                               for i in range(500)])
        j.flush()
        # 20,000 rows: checkpointed into the file before close (not only by it)
        assert path.stat().st_size > empty + 1_000_000
        assert j.counts() == {"sent": 20_000}


# -- one run at a time ---------------------------------------------------------------------

# A child that runs send_many with the journal and holds it: after the first batch's
# outcomes it says "holding" and waits (in its progress callback) until it is killed.
_HOLDER = textwrap.dedent("""
    import json, sys, time
    import mailexpress as mx
    kw, journal, rows = json.loads(sys.stdin.read())

    def progress(p):
        print("holding", flush=True)
        time.sleep(600)

    mx.send_many(mx.Config(**kw), rows, journal=journal, batch_size=2, progress=progress)
""")

# A child that runs the same call once: its outcome (or its refusal) as JSON.
_SECOND = textwrap.dedent("""
    import json, sys
    import mailexpress as mx
    kw, journal, rows = json.loads(sys.stdin.read())
    try:
        result = mx.send_many(mx.Config(**kw), rows, journal=journal, batch_size=2)
    except mx.Error as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc),
                          "journal": getattr(exc, "journal", None), "pid": getattr(exc, "pid", None)}))
    else:
        print(json.dumps({"sent": len(result.sent)}))
""")


def _child_config(em: object) -> dict[str, object]:
    from support import SVC
    return {"host": em.host, "port": em.port, "security": em.security,      # type: ignore[attr-defined]
            "ca_file": em.ca_file, "ehlo_name": "client.corp.example",      # type: ignore[attr-defined]
            "username": SVC.username, "password": SVC.password, "from_address": SVC.address}


def _invoices(n: int) -> list[dict[str, str]]:
    return [{"id": f"inv-{i}", "to": "bob@partner.example", "subject": f"invoice {i}", "body": f"body {i}"}
            for i in range(n)]


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    import select
    assert proc.stdout is not None
    ready, _w, _x = select.select([proc.stdout], [], [], timeout)
    assert ready, "the child said nothing in time"
    return proc.stdout.readline().decode()


def test_a_second_process_is_refused_while_a_run_holds_the_journal_and_resumes_after_a_kill(
        emulator_factory, tmp_path: Path) -> None:
    em = emulator_factory()
    path = str(tmp_path / "run.sqlite")
    rows = _invoices(10)
    stdin = json.dumps([_child_config(em), path, rows]).encode()
    with subprocess.Popen([sys.executable, "-c", _HOLDER], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, cwd=os.getcwd()) as holder:
        try:
            assert holder.stdin is not None
            holder.stdin.write(stdin)
            holder.stdin.close()
            assert _read_line(holder, 60).strip() == "holding"
            assert os.path.exists(path + ".lock")
            connections = em.connections
            second = subprocess.run([sys.executable, "-c", _SECOND], input=stdin, capture_output=True,
                                    cwd=os.getcwd(), timeout=60)
            assert second.returncode == 0, second.stderr.decode()
            out = json.loads(second.stdout)
            # refused at once, naming the journal, the holder and the fix; it never connected
            assert out["error"] == "ConcurrentUseError", out
            assert out["journal"] == path and out["pid"] == holder.pid
            assert path in out["message"] and f"process {holder.pid}" in out["message"]
            assert "wait for that run" in out["message"] and "another journal file" in out["message"]
            assert em.connections == connections
        finally:
            holder.kill()
            holder.wait(30)
    assert holder.returncode == -signal.SIGKILL
    sent_before = [m.message["Subject"] for m in em.messages]
    assert sent_before and len(set(sent_before)) == len(sent_before)
    # the kill dropped the lock (its file stays, unlocked): the rerun needs no clean-up
    assert os.path.exists(path + ".lock")
    again = subprocess.run([sys.executable, "-c", _SECOND], input=stdin, capture_output=True,
                           cwd=os.getcwd(), timeout=60)
    assert again.returncode == 0, again.stderr.decode()
    assert "error" not in json.loads(again.stdout), again.stdout
    subjects = [m.message["Subject"] for m in em.messages]
    assert len(set(subjects)) == len(subjects)                   # nothing sent twice
    with Journal(path) as j:
        counts = j.counts()
        unknown = j.unknown()
    # every message is sent, or was on the wire when the holder was killed (not resent)
    assert counts.get("sent", 0) + len(unknown) == 10 and set(counts) <= {"sent", "wire"}, counts
    assert sorted(subjects) == sorted(r["subject"] for r in rows if r["id"] not in unknown)
    assert not os.path.exists(path + ".lock")                    # closed: removed


def test_the_same_journal_twice_in_one_process_is_refused(emulator_factory, tmp_path: Path) -> None:
    em = emulator_factory()
    path = tmp_path / "run.sqlite"
    other = tmp_path / "link.sqlite"
    with Journal(str(path)) as j:
        j.start_run()
        j.mark_wire(["a"], [1])                 # on the wire: a second opener must not touch it
        for spelling in (str(path), os.path.join(str(tmp_path), ".", "run.sqlite")):
            with pytest.raises(mx.ConcurrentUseError) as info:
                Journal(spelling)
            err = info.value
            assert err.journal == spelling and err.pid == os.getpid()
            assert "another Journal open in this process" in str(err) and "close that one" in str(err)
            assert err.delivered is False
        other.symlink_to(path)
        with pytest.raises(mx.ConcurrentUseError):
            Journal(str(other))
        with pytest.raises(mx.ConcurrentUseError, match="in use"):
            mx.send_many(em.config(), _invoices(3), journal=str(path))
        assert em.connections == 0 and em.messages == []
        assert j.counts() == {"wire": 1}        # still this run's batch, not turned into a row
    assert not os.path.exists(str(path) + ".lock")
    result = mx.send_many(em.config(), _invoices(3), journal=str(path))     # closed: usable again
    assert result.ok and len(em.messages) == 3


def test_one_journal_object_given_to_two_runs_at_once_is_refused(emulator_factory, tmp_path: Path) -> None:
    import threading

    em = emulator_factory()
    go_on = threading.Event()
    first_batch = threading.Event()

    def progress(_p: object) -> None:
        first_batch.set()
        assert go_on.wait(30)

    with Journal(str(tmp_path / "run.sqlite")) as j:
        outcome: list[object] = []
        first = threading.Thread(target=lambda: outcome.append(
            mx.send_many(em.config(), _invoices(6), journal=j, batch_size=2, progress=progress)))
        first.start()
        try:
            assert first_batch.wait(30)
            connections = em.connections
            second = [dict(r, subject=f"second {i}") for i, r in enumerate(_invoices(6))]
            with pytest.raises(mx.ConcurrentUseError) as info:
                mx.send_many(em.config(), second, journal=j)
            assert "send_many that has not returned" in str(info.value)
            assert info.value.journal == j.path
            assert em.connections == connections
        finally:
            go_on.set()
            first.join(30)
        assert len(outcome) == 1 and outcome[0].ok      # type: ignore[attr-defined]
        assert not any(m.message["Subject"].startswith("second") for m in em.messages)
        # the first run ended: the same Journal takes the next run
        third = mx.send_many(em.config(), _invoices(8), journal=j)
        assert third.ok and len(em.messages) == 8


def test_a_journal_that_cannot_have_its_lock_file_is_a_config_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "notes.txt"
    not_a_dir.write_text("a file, not a directory\n")
    with pytest.raises(mx.ConfigError, match="lock file") as info:
        Journal(str(not_a_dir / "run.sqlite"))
    assert info.value.key == "journal" and "another journal" not in str(info.value)
    assert "directory this process may write" in str(info.value)


def test_a_run_stopped_with_a_batch_on_the_wire_keeps_the_journal_until_that_batch_is_done(
        fake_server, tmp_path: Path) -> None:
    """Ctrl-C while a batch is in the engine (the server holds its reply):
    send_many returns at once and leaves that batch to its wire thread.  The
    journal stays the run's until the batch is done (a rerun then could send
    it again), and is closed, its outcome written, right after."""
    import _thread
    import threading

    from fakeserver import greet

    answer = threading.Event()

    def script(conn) -> None:      # type: ignore[no-untyped-def]
        greet(conn, [b"8BITMIME"])
        conn.converse((b"MAIL", b"250 2.1.0 ok\r\n"), (b"RCPT", b"250 2.1.5 ok\r\n"),
                      (b"DATA", b"354 go on\r\n"))
        conn.read_data()
        assert answer.wait(30)
        conn.send(b"250 2.0.0 queued as 1\r\n")
        if conn.readline().startswith(b"QUIT"):
            conn.send(b"221 2.0.0 bye\r\n")

    srv = fake_server(script)
    cfg = mx.Config(host="127.0.0.1", port=srv.port, security="none", use_auth=False,
                    ehlo_name="client.example", from_address="a@corp.example")
    path = str(tmp_path / "run.sqlite")
    timer = threading.Timer(0.5, _thread.interrupt_main)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        mx.send_many(cfg, _invoices(1), journal=path)
    timer.join()
    try:
        with pytest.raises(mx.ConcurrentUseError):      # the batch is still on the wire
            Journal(path)
    finally:
        answer.set()
    deadline = time.monotonic() + 10
    while os.path.exists(path + ".lock"):
        assert time.monotonic() < deadline, "the journal was never let go"
        time.sleep(0.02)
    with Journal(path) as j:
        assert j.counts() == {"sent": 1}
