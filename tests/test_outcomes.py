"""results.Outcomes: a bulk run's outcomes kept in columns give back what was put in."""
from __future__ import annotations

import pickle
import sys

import pytest

import mailexpress as mx
from mailexpress import mime
from mailexpress.errors import StateError
from mailexpress.reply import Reply, Stage
from mailexpress.results import BulkResult, Outcomes, SendResult

OK = Reply(250, "2.0.0", ("2.0.0 Ok: queued",), Stage.END_OF_DATA)


_NEW = object()


def rec(to: object = "bob@partner.example", mid: object = _NEW, **kw: object) -> tuple:
    base = ("a@corp.example", to, mime.make_message_id("corp.example") if mid is _NEW else mid,
            OK, None, 3)
    return tuple(kw.get(k, v) for k, v in zip(("sender", "to", "mid", "reply", "refused", "ms"), base))


def test_records_errors_and_odd_records_come_back_equal():
    err = StateError("not sent: x")
    items = [rec(), rec(to="jörg@bücher.example"), rec(to="\udcff@x.example"),        # a lone surrogate
             rec(mid="<theirs@x.example>"), rec(mid=None), rec(to=("a@x", "b@x")),
             rec(refused={"b@x": OK}), rec(mid=f"<{mime.message_id_base()}.007@x>"),
             rec(mid=f"<{mime.message_id_base()}.5>"), err, None, rec(ms=2 ** 33),
             SendResult("<m@x>", "a@x", ("b@x",), {}, OK)]
    store = Outcomes(items)
    assert len(store) == len(items)
    assert list(store) == items
    assert store[-1] == items[-1] and store[9] is err and store[10] is None
    assert store.missing()
    store[10] = err
    assert not store.missing() and store[10] is err
    store[1] = None
    assert store[1] is None
    with pytest.raises(IndexError):
        store[len(items)]
    # what is kept whole: the records that do not fit the columns, the errors, the SendResult
    assert [i for i, _o in store.objects()] == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]


def test_columns_share_senders_replies_and_domains():
    store = Outcomes(rec(to=f"user{i}@bench.example") for i in range(10_000))
    assert not store.objects()
    assert store[0][0] is store[9_999][0] and store[0][3] is store[1][3]
    assert store.nbytes() < 10_000 * 60, store.nbytes()
    # the tuples a list would keep, for comparison: several times more
    tuples = [rec(to=f"user{i}@bench.example") for i in range(100)]
    per_tuple = sys.getsizeof(tuples[0]) + sys.getsizeof(tuples[0][1]) + sys.getsizeof(tuples[0][2])
    assert per_tuple > 3 * store.nbytes() / 10_000


def test_bulk_result_over_outcomes_counts_and_expands():
    err = StateError("not sent: x")
    err.delivered = None
    res = BulkResult([rec(), err, rec(refused={"c@x": OK}, to=("bob@partner.example", "c@x"))])
    assert len(res) == 3 and [i for i, _e in res.failed] == [1] and res.unknown == [(1, err)]
    assert not res.ok and len(res.sent) == 2
    assert isinstance(res[0], mx.SendResult) and res[0].accepted == ("bob@partner.example",)
    assert res[2].refused == {"c@x": OK} and res[2].accepted == ("bob@partner.example",)
    assert [type(o).__name__ for o in res[0:2]] == ["SendResult", "StateError"]
    assert BulkResult([rec(), rec()]).ok


def test_reply_objects_are_shared_and_still_values():
    a = Reply(250, "2.0.0", ("2.0.0 Ok",), "END_OF_DATA")
    b = Reply(250, "2.0.0", ("2.0.0 Ok",), Stage.END_OF_DATA)
    assert a is b and a.stage is Stage.END_OF_DATA
    assert pickle.loads(pickle.dumps(a)) == a
    assert Reply(code=550, enhanced=None, lines=["no"]).lines == ["no"]    # unhashable: made, not shared
    with pytest.raises(ValueError):
        Reply(250, None, (), "NOT_A_STAGE")
    with pytest.raises(TypeError):
        Reply(250)      # type: ignore[call-arg]
