"""results.Outcomes: a bulk run's outcomes kept in columns give back what was put in."""
from __future__ import annotations

import pickle
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def fits_columns(r: tuple) -> bool:
    """The rule of results.Outcomes, written out apart from the C packer."""
    sender, to, mid, reply, refused, ms = r
    prefix = "<" + mime.message_id_base() + "."
    if refused or type(to) is not str or type(mid) is not str or type(ms) is not int:
        return False
    if not (mid.startswith(prefix) and mid.endswith(">") and 0 <= ms < 2 ** 32):
        return False
    number, at, _domain = mid[len(prefix):-1].partition("@")
    return bool(at) and number.isascii() and number.isdigit() and len(number) <= 19 \
        and not (number[0] == "0" and number != "0") and len(to.encode("utf-8", "surrogatepass")) <= 65535


_base = mime.message_id_base()
_mids = st.one_of(
    st.integers(0, 10 ** 19 - 1).map(str), st.sampled_from(["", "007", "0", "1x", "١٢", "9" * 20]),
).flatmap(lambda n: st.tuples(st.just(n), st.sampled_from(["corp.example", "", "a@b", "x>y", "é.example"]),
                              st.sampled_from([f"<{_base}.", "<other.", f"{_base}.", f"<{_base}"]),
                              st.sampled_from([">", "", ">>"]))).map(lambda t: f"{t[2]}{t[0]}@{t[1]}{t[3]}")
_records = st.tuples(
    st.sampled_from(["a@corp.example", "b@corp.example", "ö@corp.example"]),
    st.one_of(st.text(max_size=12), st.sampled_from(["\udcff@x", "x" * 70_000]),
              st.tuples(st.just("a@x"), st.just("b@x"))),
    st.one_of(_mids, st.none(), st.just(f"<{_base}.12@corp.example")),
    st.sampled_from([OK, Reply(451, "4.0.0", ("4.0.0 later",), Stage.END_OF_DATA)]),
    st.sampled_from([None, {}, {"b@x": OK}]),
    st.one_of(st.integers(-2, 3), st.sampled_from([2 ** 32 - 1, 2 ** 32, 2 ** 70, True])),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(_records, st.none()), max_size=40), st.integers(1, 3))
def test_packed_records_come_back_equal_and_only_those_that_fit(items, compact_every):
    """Set in any order, packed in several rounds (`compact`): every record
    reads back equal, kept in columns exactly when it fits them."""
    store = Outcomes()
    store.add(len(items))
    for k, item in enumerate(reversed(items)):
        i = len(items) - 1 - k
        if item is not None:
            store[i] = item
        if k % compact_every == 0:
            store.compact()
    store.compact()      # what was set after the last round too
    # an empty refused dict is no refusal: in columns it comes back as None, as record() makes it
    want = [r[:4] + (None,) + r[5:] if r is not None and fits_columns(r) else r for r in items]
    assert list(store) == want
    whole = {i for i, _o in store.objects()}
    assert whole == {i for i, r in enumerate(items) if r is not None and not fits_columns(r)}
    assert list(store) == want


def test_packing_refuses_a_store_out_of_shape():
    from mailexpress import _core
    store = Outcomes([rec()])
    args = [{0: rec()}, (store._sender,) * 8, store._blob, store._kind, store._obj, store._tables,
            store._index, store._prefix, store._last]
    with pytest.raises(ValueError, match="column"):
        _core.pack_records(*args)
    args[1] = (store._sender, store._reply, store._elapsed, store._roff, store._rlen, store._mid,
               store._dom, store._replen)
    args[0] = {5000: rec()}
    with pytest.raises(IndexError):
        _core.pack_records(*args)


def test_a_full_table_keeps_the_rest_whole():
    """65,535 senders fill the senders' table: a record with a new one is kept whole."""
    items = [rec(sender=f"s{i}@corp.example") for i in range(65_537)]
    store = Outcomes(items)
    assert [i for i, _o in store.objects()] == [65_535, 65_536]
    assert store[65_534] == items[65_534] and store[65_536] == items[65_536]
    store.append(rec(sender="s7@corp.example"))    # one it has: in columns
    store.compact()
    assert len(store.objects()) == 2 and store[65_537][0] == "s7@corp.example"


def queued(i: int) -> Reply:
    """A reply unlike every other, as Postfix's and Exchange's are."""
    return Reply(250, "2.0.0", (f"2.0.0 Ok: queued as 4X{i:09X}",), Stage.END_OF_DATA)


def test_replies_unlike_each_other_stay_in_columns_at_their_text_s_cost():
    """A server that answers every message differently: after the first 1,024
    replies (kept as objects) each costs its text, not a Reply object, and
    reads back equal."""
    n = 20_000
    items = [rec(to=f"user{i}@bench.example", reply=queued(i)) for i in range(n)]
    store = Outcomes(items)
    assert not store.objects()
    assert list(store) == items
    assert len(store._tables[1]) == 1024 and len(store._tables[3]) == 1
    per_message = store.nbytes() / n
    text = len(items[-1][1]) + len(items[-1][3].lines[0])
    assert per_message < 40 + text, per_message      # 31 B of columns, some room to grow
    one_reply = sys.getsizeof(queued(1)) + sys.getsizeof(queued(1).lines) + sys.getsizeof(queued(1).lines[0])
    assert one_reply > 2 * (per_message - text)


class _MyReply(Reply):
    pass


_odd_lines = st.lists(st.one_of(st.text(max_size=8), st.sampled_from(["a\nb", "\udcff", "é" * 3, ""])),
                      max_size=3)
_any_reply = st.builds(
    lambda code, enh, lines, stage, sub: (_MyReply if sub else Reply)(code, enh, tuple(lines), stage),
    st.integers(200, 599), st.sampled_from([None, "2.0.0", "4.7.1"]), _odd_lines,
    st.sampled_from([None, *Stage]), st.booleans())


def spellable(reply: Reply) -> bool:
    """The rule of Outcomes for a reply after its table is full, written out apart from C."""
    try:
        text = "\n".join(reply.lines).encode("utf-8")
    except UnicodeError:
        return False
    return type(reply) is Reply and bool(reply.lines) and not any("\n" in line for line in reply.lines) \
        and len(text) <= 65535


@settings(max_examples=100, deadline=None)
@given(st.lists(_any_reply, min_size=1, max_size=30))
def test_replies_after_a_full_table_come_back_equal_and_only_odd_ones_whole(replies):
    """Past the replies kept as objects, any reply reads back equal; it is
    kept whole exactly when its text cannot be spelled out and read back."""
    store = Outcomes(rec(reply=queued(i)) for i in range(1024))
    items = [rec(reply=r) for r in replies]
    store.extend(items)
    got = list(store)[1024:]
    assert got == items
    assert [type(r[3]) for r in got] == [type(r) for r in replies]
    whole = {i - 1024 for i, _o in store.objects()}
    assert whole == {k for k, r in enumerate(replies) if not spellable(r)}
