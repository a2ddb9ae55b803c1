"""engine.c: the pure send engine against a scripted server, all in memory
(mailexpress._testhooks._engine_run).  Each test asserts the exact bytes the
engine writes, the replies it asks for (in order, by what they answer) and
each job's outcome; the socket-level tests (test_engine_failures.py,
test_protocol_edges.py) check the same rules through a Session."""
from __future__ import annotations

from mailexpress import _testhooks

run = _testhooks._engine_run
MAIL = b"MAIL FROM:<a@example.org>"
RCPT = b"RCPT TO:<b@example.org>"
ENVELOPE = MAIL + b"\r\n" + RCPT + b"\r\n"


def bdat(body: bytes = b"hi") -> tuple:
    return (MAIL, [RCPT], "bdat", body, False)


def test_data_pipelined_envelope_then_body_after_354():
    wire, reads, outcomes, failure, _ = run([(MAIL, [RCPT], "data", b".dot\nx", False)],
                                            [250, 250, 354, 250], pipelining=True)
    assert wire == ENVELOPE + b"DATA\r\n..dot\r\nx\r\n.\r\n"
    assert reads == ["MAIL", "RCPT", "DATA", "END_OF_DATA"]
    assert outcomes == [("sent", True)] and failure == ""


def test_data_refused_ends_the_transaction_with_rset():
    wire, reads, outcomes, _, _ = run([(MAIL, [RCPT], "data", b"x", False)],
                                      [250, 250, 554, 250])
    assert wire == ENVELOPE + b"DATA\r\nRSET\r\n"
    assert reads == ["MAIL", "RCPT", "DATA", "RSET"]
    assert outcomes == [("refused_data", False)]


def test_a_2xx_to_data_is_out_of_step_and_no_body_goes():
    wire, _, outcomes, failure, job = run([(MAIL, [RCPT], "data", b"x", False)], [250, 250, 250])
    assert wire == ENVELOPE + b"DATA\r\n"
    assert failure == "protocol" and job == 0 and outcomes == [("failed", False)]


def test_bdat_batch_guards_each_mail_behind_an_unanswered_bdat_with_rset():
    wire, reads, outcomes, _, _ = run([bdat(), bdat()], [250] * 7, pipelining=True)
    one = ENVELOPE + b"BDAT 4 LAST\r\nhi\r\n"
    assert wire == one + b"RSET\r\n" + one
    assert reads == ["MAIL", "RCPT", "BDAT", "GUARD", "MAIL", "RCPT", "BDAT"]
    assert outcomes == [("sent", True), ("sent", True)]


def test_421_mid_batch_nothing_from_that_message_on_was_taken():
    _, reads, outcomes, failure, job = run([bdat()] * 3, [250, 250, 250, 250, 421],
                                           pipelining=True)
    assert reads == ["MAIL", "RCPT", "BDAT", "GUARD", "MAIL"]
    assert failure == "421" and job == 1
    assert outcomes == [("sent", True), ("failed", False), ("not_sent", False)]


def test_broken_write_drains_replies_to_what_reached_the_server():
    # the write breaks 2 bytes into the guard RSET: the first message went out
    # whole, its three replies are still read; the second never went out
    one = ENVELOPE + b"BDAT 4 LAST\r\nhi\r\n"
    wire, reads, outcomes, failure, job = run([bdat(), bdat()], [250] * 3, pipelining=True,
                                              fail_after=len(one) + 2)
    assert wire == one + b"RS"
    assert reads == ["MAIL", "RCPT", "BDAT"]
    assert failure == "io" and job == 1
    assert outcomes == [("sent", True), ("failed", False)]


def test_timed_out_write_is_not_drained_and_a_whole_body_is_unknown():
    one = ENVELOPE + b"BDAT 4 LAST\r\nhi\r\n"
    _, reads, outcomes, failure, job = run([bdat(), bdat()], [250] * 3, pipelining=True,
                                           fail_after=len(one) + 2, broken=False)
    assert reads == [] and failure == "io" and job == 0
    assert outcomes == [("failed", True), ("not_sent", False)]


def test_without_pipelining_one_command_at_a_time_and_no_rcpt_after_refused_mail():
    wire, reads, outcomes, _, _ = run([bdat(), bdat()], [550, 250, 250, 250])
    assert wire == MAIL + b"\r\n" + ENVELOPE + b"BDAT 4 LAST\r\nhi\r\n"
    assert reads == ["MAIL", "MAIL", "RCPT", "BDAT"]
    assert outcomes == [("refused_mail", False), ("sent", True)]


def test_probe_pipelined_sends_mail_rcpt_rset_in_one_go():
    wire, reads, outcomes, _, _ = run([(MAIL, [RCPT], "none", b"", True)], [550, 503, 250],
                                      pipelining=True)
    assert wire == ENVELOPE + b"RSET\r\n"
    assert reads == ["MAIL", "RCPT", "RSET"] and outcomes == [("refused_mail", False)]


def test_probe_without_pipelining_skips_rcpt_after_refused_mail_but_not_rset():
    wire, reads, _, _, _ = run([(MAIL, [RCPT], "none", b"", True)], [550, 250])
    assert wire == MAIL + b"\r\nRSET\r\n" and reads == ["MAIL", "RSET"]


def test_step_jobs_one_command_each():
    assert run([(MAIL, [], "none", b"", False)], [250])[1:3] == (["MAIL"], [("done", False)])
    assert run([(None, [RCPT], "none", b"", False)], [550])[:3] == (
        RCPT + b"\r\n", ["RCPT"], [("refused_rcpt", False)])
    assert run([(None, [], "none", b"", True)], [250])[:2] == (b"RSET\r\n", ["RSET"])
    wire, reads, outcomes, _, _ = run([(None, [], "data", b"x", False)], [354, 250])
    assert wire == b"DATA\r\nx\r\n.\r\n" and outcomes == [("sent", True)]


def test_stop_on_error_starts_nothing_after_a_refused_message():
    wire, _, outcomes, failure, _ = run([(MAIL, [RCPT], "data", b"x", False)] * 2,
                                        [250, 550, 554, 250], pipelining=True,
                                        stop_on_error=True)
    # DATA went with the envelope; refused (no recipient), the transaction is reset
    assert wire == ENVELOPE + b"DATA\r\nRSET\r\n" and failure == ""
    assert outcomes == [("refused_rcpt", False), ("stopped", False)]


def test_eof_before_the_final_reply_leaves_a_whole_body_unknown():
    _, _, outcomes, failure, job = run([bdat(), bdat()], [250, 250], pipelining=True)
    assert failure == "io" and job == 0
    assert outcomes == [("failed", True), ("unknown", True)]
