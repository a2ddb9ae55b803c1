"""Classification of connector pushback and the backoff (mailexpress.throttle)."""
from __future__ import annotations

import random

import pytest

from mailexpress.reply import Reply, Stage
from mailexpress.throttle import Backoff, Pushback, classify


def r(code: int, enhanced: str | None, text: str) -> Reply:
    return Reply(code, enhanced, ((f"{enhanced} " if enhanced else "") + text,))


CASES = [
    # Exchange on-premises receive connector rate limit (session closed)
    (r(421, "4.4.2", "Message submission rate for this client has exceeded the configured limit"),
     Stage.END_OF_DATA, 3, Pushback.RATE),
    (r(421, "4.3.2", "The maximum number of concurrent connections has exceeded a limit, "
                     "closing transmission channel"), Stage.CONNECT, 0, Pushback.CONCURRENCY),
    (r(432, "4.3.2", "STOREDRV.ClientSubmit; sender thread limit exceeded"),
     Stage.END_OF_DATA, 0, Pushback.CONCURRENCY),
    (r(432, "4.3.2", "Concurrent connections limit exceeded"), Stage.END_OF_DATA, 0, Pushback.CONCURRENCY),
    (r(554, "5.2.0", "STOREDRV.Submission.Exception:SubmissionQuotaExceededException"),
     Stage.END_OF_DATA, 5, Pushback.QUOTA),
    (r(550, "5.7.233", "Your message can't be sent because your tenant exceeded its daily "
                       "limit for sending email to external recipients"), Stage.RCPT, 0, Pushback.QUOTA),
    # OpenSMTPD after 'max-mails' messages on one session
    (r(452, "4.5.3", "Too many messages sent"), Stage.MAIL, 100, Pushback.CONNECTION),
    # a bare 421 after N messages: Exchange's MaxMessagesPerConnection
    (r(421, "4.4.1", "Connection timed out"), Stage.MAIL, 20, Pushback.CONNECTION),
    (r(421, None, "closing"), Stage.MAIL, 0, Pushback.RATE),
    (r(451, "4.7.0", "Temporary server error. Please try again later. PRX4"), Stage.MAIL, 0, Pushback.RATE),
    # not pushback: the message's own outcome
    (r(452, "4.5.3", "Too many recipients"), Stage.RCPT, 0, None),
    (r(550, "5.7.1", "Client does not have permissions to send as this sender"), Stage.MAIL, 0, None),
    (r(554, "5.2.0", "STOREDRV.Deliver; Corrupt message content"), Stage.END_OF_DATA, 0, None),
    (r(412, "4.3.2", "Service not active"), Stage.MAIL, 0, None),
    (r(450, "4.2.1", "mailbox busy"), Stage.RCPT, 0, None),
    (r(250, "2.0.0", "OK"), Stage.MAIL, 0, None),
]


@pytest.mark.parametrize("reply, stage, before, expected", CASES,
                         ids=[f"{c[0].code}-{c[0].enhanced}-{c[1].value}-{c[2]}" for c in CASES])
def test_classify(reply: Reply, stage: Stage, before: int, expected: Pushback | None) -> None:
    assert classify(reply, stage, accepted_on_connection=before) is expected


def test_classify_without_a_reply() -> None:
    assert classify(None, Stage.MAIL) is None


def test_backoff_is_jittered_bounded_and_resets() -> None:
    b = Backoff(base=1.0, cap=8.0, tries=6, rng=random.Random(7))
    delays = [b.next_delay() for _ in range(7)]
    assert delays[-1] is None
    got = [d for d in delays if d is not None]
    assert len(got) == 6
    ceilings = [1, 2, 4, 8, 8, 8]
    assert all(0.1 <= d <= c for d, c in zip(got, ceilings))
    assert len(set(got)) == 6          # jitter: no two the same
    b.reset()
    assert b.next_delay() is not None


def test_backoff_spreads_clients_apart() -> None:
    firsts = {round(Backoff(base=4.0, rng=random.Random(seed)).next_delay() or 0, 3) for seed in range(20)}
    assert len(firsts) > 15
