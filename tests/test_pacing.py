"""The sender's pacing, as pure decisions: a number's rate slots, Meta's pair limit, the retry back-off."""

from __future__ import annotations

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.pacing import PairGate, RateGate, backoff_s
from tests.examples import examples


@settings(max_examples=examples(300))
@given(rate=st.integers(min_value=1, max_value=1000),
       gaps=st.lists(st.floats(min_value=0.0, max_value=3.0, allow_nan=False), min_size=1, max_size=200))
def test_slots_never_exceed_the_rate_in_any_second_even_after_a_stall(rate: int, gaps: list[float]) -> None:
    """Whenever the reservations come (a burst, or a stalled loop catching up), the slots are at least 1/rate
    apart, so no second holds more than `rate` sends: a sender that fell behind does not burst to catch up."""
    gate, now, slots = RateGate(rate), 0.0, []
    for gap in gaps:
        now += gap
        slot = gate.reserve(now)
        assert slot >= now
        slots.append(slot)
    assert all(b - a >= 1.0 / rate - 1e-9 for a, b in itertools.pairwise(slots))
    assert max(sum(1 for t in slots if start <= t < start + 1.0 - 1e-9) for start in slots) <= rate


def test_a_slot_is_taken_at_once_when_the_number_was_idle() -> None:
    gate = RateGate(8)
    assert gate.reserve(10.0) == 10.0
    assert gate.reserve(10.0) == 10.125
    assert gate.reserve(20.0) == 20.0


def test_the_pair_limit_spaces_messages_to_one_customer_only() -> None:
    pairs = PairGate(6.0)
    assert pairs.ready_at("a") == 0.0
    pairs.sent("a", 100.0)
    assert pairs.ready_at("a") == 106.0
    assert pairs.ready_at("b") == 0.0


def test_retry_back_off_grows_with_full_jitter_up_to_its_ceiling() -> None:
    rng = random.Random(7)
    for attempt, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (10, 5.0)):
        waits = [backoff_s(attempt, 0.5, 5.0, rng) for _ in range(200)]
        assert all(0.25 <= w <= ceiling for w in waits), (attempt, min(waits), max(waits))
        assert max(waits) > ceiling * 0.8
