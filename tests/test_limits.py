"""Limits, presets and the pacer (mailexpress.limits); pure, with a fake clock."""
from __future__ import annotations

import threading

import pytest

import mailexpress as mx
from mailexpress.limits import PRESETS, Limits, Pacer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def test_presets_state_their_source_and_values() -> None:
    online = Limits.preset("exchange_online")
    assert (online.messages_per_minute, online.connections, online.recipients_per_day,
            online.recipients_per_message) == (30, 3, 10_000, 500)
    assert Limits.preset("exchange_client_frontend").messages_per_connection == 20
    assert Limits.preset("opensmtpd").messages_per_connection == 100
    for name, (_limits, source) in PRESETS.items():
        assert len(source) > 40, name


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(mx.ConfigError, match="exchange_online") as info:
        Limits.preset("exchange_onlin")
    assert info.value.key == "limits"   # type: ignore[attr-defined]


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), True, "5"])
def test_bad_values_name_the_field(bad: object) -> None:
    with pytest.raises(mx.ConfigError, match="messages_per_minute"):
        Limits(messages_per_minute=bad)  # type: ignore[arg-type]


def test_whole_numbers_where_counts_are_meant() -> None:
    with pytest.raises(mx.ConfigError, match="connections must be a whole number"):
        Limits(connections=2.5)  # type: ignore[arg-type]
    assert Limits(messages_per_minute=7.5).messages_per_minute == 7.5


def test_coerce_from_config_shapes() -> None:
    assert Limits.coerce(None) is None
    assert Limits.coerce("exchange_online") == Limits.preset("exchange_online")
    custom = Limits.coerce({"preset": "exchange_online", "messages_per_minute": 20})
    assert custom is not None and custom.messages_per_minute == 20 and custom.connections == 3
    with pytest.raises(mx.ConfigError, match="unknown key 'per_minute'"):
        Limits.coerce({"per_minute": 3})
    with pytest.raises(mx.ConfigError, match="preset name"):
        Limits.coerce(42)  # type: ignore[arg-type]


def test_stricter_takes_the_smaller_of_each() -> None:
    a = Limits(messages_per_minute=30, connections=3)
    b = Limits(messages_per_minute=10, messages_per_connection=20)
    assert a.stricter(b) == Limits(messages_per_minute=10, connections=3, messages_per_connection=20)
    assert str(a) == "messages per minute 30, connections 3"


def test_pacer_spaces_events_evenly_without_bursts() -> None:
    clock = FakeClock()
    pacer = Pacer(600, clock=clock, sleep=clock.sleep, slice_s=10)
    times = []
    for _ in range(50):
        assert pacer.wait()
        times.append(clock.now)
    gaps = [round(b - a, 9) for a, b in zip(times, times[1:])]
    assert gaps == [0.1] * 49
    # any window of one minute holds at most 600 events: here, any 1 s holds at most 10
    assert sum(1 for t in times if times[0] <= t < times[0] + 1.0) == 10


def test_pacer_does_not_save_up_idle_time() -> None:
    clock = FakeClock()
    pacer = Pacer(60, clock=clock, sleep=clock.sleep)
    pacer.wait()
    clock.now += 30          # the input paused for 30 s
    t0 = clock.now
    pacer.wait()
    pacer.wait()
    assert clock.now - t0 == pytest.approx(1.0)   # one slot, not a burst of 30


def test_pacer_sleeps_in_slices_and_can_be_cancelled() -> None:
    clock = FakeClock()
    pacer = Pacer(1, clock=clock, sleep=clock.sleep, slice_s=0.25)
    pacer.wait()
    clock.slept.clear()
    assert pacer.wait()
    assert max(clock.slept) <= 0.25 and sum(clock.slept) == pytest.approx(60.0)
    real = Pacer(1, slice_s=0.05)
    real.wait()
    threading.Timer(0.1, real.cancel).start()
    assert real.wait() is False


def test_pacer_shared_by_threads_hands_out_distinct_slots() -> None:
    clock = FakeClock()
    pacer = Pacer(60, clock=clock, sleep=lambda s: None)
    slots: list[float] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(25):
            due = pacer.reserve()
            with lock:
                slots.append(due)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(slots) == [1000.0 + i for i in range(100)]
