"""What an operator sees of an inbox's offers on the Ray node's export: reassignments, time to offer, time to
accept (`actors/inbox_metrics.py`), from real inbox and agent actors; and the rules behind them, pure."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from actors.metric_recorder import MetricRecorder
from actors.transaction_state import TxState
from store.tables import Transaction
from tests.metrics_support import Samples, figure, settled
from tests.routing_support import Scenario, customer_id

INBOX = "ray_wa_router_inbox_"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _figures(inbox: int) -> Callable[[Samples], dict[str, float]]:
    box = str(inbox)

    def read(samples: Samples) -> dict[str, float]:
        return {
            "made": figure(samples, f"{INBOX}offers_total", inbox=box, outcome="made"),
            "missed": figure(samples, f"{INBOX}offers_total", inbox=box, outcome="missed"),
            "declined": figure(samples, f"{INBOX}offers_total", inbox=box, outcome="declined"),
            "accepted": figure(samples, f"{INBOX}offers_total", inbox=box, outcome="accepted"),
            "reassignments": figure(samples, f"{INBOX}reassignments_total", inbox=box),
            "time to offer samples": figure(samples, f"{INBOX}time_to_offer_seconds_count", inbox=box),
            "time to accept samples": figure(samples, f"{INBOX}time_to_accept_seconds_count", inbox=box),
        }

    return read


def test_a_missed_offer_made_to_another_agent_is_one_reassignment_with_both_times(sc: Scenario) -> None:
    a, b = sc.agents(2)
    inbox = sc.inbox([a, b], reassign_after_s=1)
    sock_a, sock_b = sc.socket(a), sc.socket(b)
    sent = time.monotonic()
    sc.send(customer_id())
    tx_id = sock_a.next("offer")["transaction_id"]
    first_offer_within = time.monotonic() - sent
    assert sock_b.next("offer")["transaction_id"] == tx_id  # a let it ring out
    sc.do(tx_id, "accept", b)
    accepted_within = time.monotonic() - sent
    samples = settled(sc.org.id, _figures(inbox), {
        "made": 2, "missed": 1, "accepted": 1, "reassignments": 1, "time to offer samples": 1,
        "time to accept samples": 1})
    # The times are the conversation's own: within what the test saw from outside.
    assert 0 <= figure(samples, f"{INBOX}time_to_offer_seconds_sum", inbox=str(inbox)) <= first_offer_within
    assert 0 < figure(samples, f"{INBOX}time_to_accept_seconds_sum", inbox=str(inbox)) <= accepted_within
    # Labelled by organization and inbox (Ray adds its own: capitalized, or OpenTelemetry's), never a customer,
    # a conversation or an agent.
    ours = {key for name, labels, _ in samples if name.startswith(INBOX) for key in labels
            if not key[0].isupper() and not key.startswith("otel_")}
    assert ours <= {"organization", "inbox", "outcome", "step", "le"}


def test_a_declined_offer_made_again_to_the_only_agent_is_no_reassignment(sc: Scenario) -> None:
    (agent,) = sc.agents(1)
    inbox = sc.inbox([agent])
    sock = sc.socket(agent)
    sc.send(customer_id())
    tx_id = sock.next("offer")["transaction_id"]
    sc.do(tx_id, "decline", agent)
    assert sock.next("offer")["transaction_id"] == tx_id  # a new round: the same agent again
    samples = settled(sc.org.id, _figures(inbox), {"made": 2, "declined": 1, "time to offer samples": 1})
    assert figure(samples, f"{INBOX}reassignments_total", inbox=str(inbox)) == 0


# ---------------------------------------------------------------------- the rules, pure


def _queued() -> TxState:
    return TxState(id=7, customer_id=3, state="queued", waiting_since=T0)


def test_only_the_first_offer_counts_a_time_to_offer_and_only_another_agent_a_reassignment() -> None:
    fresh = _queued()
    assert fresh.never_offered and not fresh.moves_to(1)
    missed = fresh.offered(1, T0, sticky_dial=False, offer_id="7.a").requeued("missed", 1)
    assert not missed.never_offered
    assert missed.moves_to(2) and not missed.moves_to(1)  # a sticky re-dial is no reassignment
    # Held by agent 1 (accepted), sent back to the queue by a supervisor: offering it to 2 moves it.
    back = missed.offered(1, T0, sticky_dial=False, offer_id="7.b").assigned(1, T0).back_to_queue(1)
    assert back.moves_to(2) and not back.moves_to(1)
    # Started by agent 5 (WhatsApp Back: never offered), sent back to the queue: no first offer any more.
    outbound = TxState(id=8, customer_id=4, state="assigned", waiting_since=T0, agent_id=5, assigned_at=T0)
    assert not outbound.back_to_queue(5).never_offered and outbound.back_to_queue(5).moves_to(6)


def test_a_recording_that_fails_is_logged_once_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    def broken(metric: Any) -> None:
        calls.append(metric)
        raise ValueError("Missing value for tag key(s): inbox.")

    recorder = MetricRecorder(lambda metrics: {"offers": "the offers counter"})
    with caplog.at_level(logging.DEBUG, logger="actors.metric_recorder"):
        recorder.record("offers", broken)
        recorder.record("offers", broken)
    assert calls == ["the offers counter", "the offers counter"]
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.DEBUG]


def test_times_are_measured_from_the_states_the_inbox_holds() -> None:
    offered = TxState(id=7, customer_id=3, state="offered", waiting_since=T0, offered_to=1, offer_seq=1,
                      offered_at=T0 + timedelta(seconds=2), last_agent=1)
    assigned = offered.assigned(1, T0 + timedelta(seconds=5))
    assert assigned.assigned_at is not None and offered.offered_at is not None
    assert (assigned.assigned_at - offered.offered_at).total_seconds() == 3


def test_an_offer_reloaded_after_a_restart_is_timed_from_its_commit_and_known_to_its_agent() -> None:
    committed = T0 + timedelta(seconds=4)
    row = Transaction(id=7, customer_id=3, state="offered", waiting_since=T0, offered_to=1, offer_id="7.a",
                      offer_expires_at=T0 + timedelta(seconds=34), offer_seq=1, sticky_dials=0,
                      sticky_declined=False, tried=[], updated_at=committed)
    reloaded = TxState.of(row)
    assert reloaded.offered_at == committed  # the offer's commit wrote the row last
    assert reloaded.last_agent == 1 and not reloaded.requeued("missed", 1).moves_to(1)
    queued = TxState.of(Transaction(id=8, customer_id=4, state="queued", waiting_since=T0, offer_seq=2, tried=[1],
                                    sticky_dials=0, sticky_declined=False, updated_at=committed))
    assert queued.offered_at is None and queued.moves_to(1)  # offered before, to an agent no longer known
