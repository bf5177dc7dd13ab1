"""Ray-free parts of the routing core: transaction transitions, mailboxes, cross-loop wake-ups."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from actors.event_signal import EventSignal
from actors.mailbox import Mailbox, MailboxGaveUp
from actors.transaction_state import TxState

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def queued(**kw: Any) -> TxState:
    return TxState(id=7, customer_id=3, state="queued",
                   waiting_since=T0, **kw)


# ------------------------------------------------------------------ transitions are pure


def test_transitions_return_new_states_and_leave_the_old_one_alone() -> None:
    tx = queued()
    offered = tx.offered(3, T0 + timedelta(seconds=30), sticky_dial=False, offer_id="7.a")
    assert (tx.state, tx.offer_seq, tx.offer_id) == ("queued", 0, None)
    assert (offered.state, offered.offered_to, offered.offer_seq, offered.offer_id) == ("offered", 3, 1, "7.a")
    assert offered.past_offerees == frozenset({3})
    missed = offered.requeued("missed", dials_per_agent=1)
    assert (missed.state, missed.offered_to, missed.offer_id, missed.tried) == ("queued", None, None, (3,))
    assert offered.state == "offered"  # unchanged: memory only follows a commit
    assigned = offered.assigned(3, T0)
    assert (assigned.state, assigned.agent_id, assigned.offer_id, assigned.sticky_agent) == ("assigned", 3, None, 3)


def test_sticky_dials_are_spent_then_the_sticky_agent_counts_as_tried() -> None:
    tx = queued(sticky_agent=5)
    for dial in range(1, 3):
        offered = tx.offered(5, T0, sticky_dial=True, offer_id=f"7.{dial}")
        tx = offered.requeued("missed", dials_per_agent=2)
        assert tx.sticky_dials == dial
    assert tx.tried == (5,)
    declined = queued(sticky_agent=5).offered(5, T0, sticky_dial=True, offer_id="7.x").requeued("declined", 3)
    assert declined.sticky_declined and declined.tried == (5,)


def test_a_rescinded_offer_is_not_counted_and_a_new_round_clears_every_counter() -> None:
    tx = queued(tried=(1,), sticky_dials=2, sticky_declined=True)
    rescinded = tx.offered(2, T0, sticky_dial=False, offer_id="7.r").requeued("rescinded", 1, count_as_tried=False)
    assert rescinded.tried == (1,)
    fresh = rescinded.new_round()
    assert (fresh.tried, fresh.sticky_dials, fresh.sticky_declined) == ((), 0, False)
    assert fresh.columns(T0)["sticky_declined"] is False  # persisted, so a restart keeps the outcome


# ------------------------------------------------------------------ mailboxes


def test_mailbox_delivers_in_order_retries_failures_and_answers_each_letter() -> None:
    async def run() -> tuple[list[tuple[str, tuple[Any, ...]]], list[Any]]:
        delivered: list[tuple[str, tuple[Any, ...]]] = []
        failures = {"b": 2}

        async def send(method: str, args: tuple[Any, ...]) -> Any:
            if failures.get(method, 0) > 0:
                failures[method] -= 1
                raise ConnectionError("lost")
            delivered.append((method, args))
            return f"{method}-ok"

        box = Mailbox("test", send, deadline_s=1.0, give_up_after_s=10.0)
        answers = await asyncio.gather(box.post("a", 1), box.post("b", 2), box.post("c", 3))
        return delivered, list(answers)

    delivered, answers = asyncio.run(run())
    assert delivered == [("a", (1,)), ("b", (2,)), ("c", (3,))]
    assert answers == ["a-ok", "b-ok", "c-ok"]


def test_mailbox_keeps_only_the_newest_keyed_letter_and_reports_give_ups() -> None:
    async def run_quiet() -> tuple[list[Any], list[str]]:
        sent: list[Any] = []
        given_up: list[str] = []

        async def send(method: str, args: tuple[Any, ...]) -> Any:
            if method == "never":
                raise TimeoutError
            sent.append(args[0])
            return None

        box = Mailbox("test", send, deadline_s=0.05, give_up_after_s=0.2,
                      on_give_up=lambda letter: given_up.append(letter.method))
        first = box.post("snapshot", 1, key="s")
        for version in (2, 3, 4):
            box.post("snapshot", version, key="s")
        await first
        with pytest.raises(MailboxGaveUp):
            await box.post("never")
        return sent, given_up

    sent, given_up = asyncio.run(run_quiet())
    assert sent == [1, 4]
    assert given_up == ["never"]


def test_mailbox_merges_letters_waiting_behind_the_one_on_the_wire_and_keeps_their_order() -> None:
    def join(queued: tuple[Any, ...], newer: tuple[Any, ...]) -> tuple[Any, ...]:
        return (queued[0] + newer[0],)

    async def run() -> tuple[list[tuple[str, tuple[Any, ...]]], list[Any]]:
        sent: list[tuple[str, tuple[Any, ...]]] = []
        first_on_wire = asyncio.Event()

        async def send(method: str, args: tuple[Any, ...]) -> Any:
            sent.append((method, args))
            if len(sent) == 1:
                await first_on_wire.wait()
            return len(sent)

        box = Mailbox("test", send, deadline_s=1.0, give_up_after_s=10.0)
        answers = [box.post("deliver", [1], merge=join)]
        await asyncio.sleep(0)  # [1] is on the wire: nothing may join it
        answers += [box.post("deliver", [2], merge=join), box.post("deliver", [3], merge=join),
                    box.post("other", "x"), box.post("deliver", [4], merge=join), box.post("deliver", [5])]
        first_on_wire.set()
        return sent, list(await asyncio.gather(*answers))

    sent, answers = asyncio.run(run())
    # Merged only with the newest unsent letter of its method, never across another call or a plain letter.
    assert sent == [("deliver", ([1],)), ("deliver", ([2, 3],)), ("other", ("x",)), ("deliver", ([4],)),
                    ("deliver", ([5],))]
    assert answers == [1, 2, 2, 3, 4, 5]


# ------------------------------------------------------------------ wake-ups across event loops


def test_event_signal_wakes_a_reader_waiting_on_another_threads_loop() -> None:
    signal = EventSignal()
    registered = threading.Event()
    woke: list[bool] = []

    def reader() -> None:
        async def wait() -> None:
            waiter = signal.register()
            registered.set()
            try:
                await asyncio.wait_for(waiter[1].wait(), timeout=5)
                woke.append(True)
            finally:
                signal.discard(waiter)

        asyncio.run(wait())

    thread = threading.Thread(target=reader)
    thread.start()
    assert registered.wait(5)
    signal.notify()
    thread.join(5)
    assert woke == [True]


# ------------------------------------------------------------------ an agent's answers reach its inbox


def test_an_answer_that_comes_after_the_inbox_stopped_waiting_is_still_absorbed() -> None:
    """Agents push their new snapshot to their other inboxes only: the calling inbox learns it from the answer."""
    from actors.agent_link import AgentLink
    from config.settings import Settings

    snapshot = {"user_id": 5, "status": "available", "max_concurrent": 2, "active_count": 0,
                "has_pending_offer": False, "idle_since": None, "version": [1, 9]}

    calls: list[int] = []

    class SlowAgent:
        async def end(self, transaction_id: int, reason: str) -> dict[str, Any]:
            calls.append(transaction_id)
            if len(calls) == 1:
                await asyncio.sleep(0.3)  # the first answer is lost in a slow call: the mailbox sends it again
            return snapshot

    class Agents:
        def agent(self, org_id: int, user_id: int) -> SlowAgent:
            return SlowAgent()

    async def run() -> tuple[dict[str, Any] | None, dict[str, Any] | None, int]:
        changes: list[None] = []
        link = AgentLink(1, 1, Settings(actor_call_timeout_s=0.1), lambda: Agents(),  # type: ignore[arg-type,return-value]
                         lambda: changes.append(None))
        link.load(frozenset({5}), {5: {**snapshot, "active_count": 1, "version": None}})
        await link.wait_for_answers([link.tell(5, "end", 11, "closed")])
        after_wait = link.snapshots.get(5)
        await asyncio.sleep(0.4)
        return after_wait, link.snapshots.get(5), len(changes)

    after_wait, later, changes = asyncio.run(run())
    assert after_wait is not None and after_wait["active_count"] == 1  # not answered within the wait
    assert later == snapshot and changes == 1  # absorbed when it came, and routing asked to look again


def test_an_inbox_joins_the_deliveries_that_wait_behind_a_slow_delivery_to_the_same_agent() -> None:
    """Joined with their told events (those a commit showed on the agent's stream already), in order."""
    from actors.agent_link import AgentLink
    from config.settings import Settings

    received: list[tuple[int, list[tuple[int, list[dict[str, Any]]]], list[Any] | None]] = []

    class SlowAgent:
        async def deliver(self, inbox_id: int, deliveries: list[tuple[int, list[dict[str, Any]]]],
                          told: list[Any] | None = None) -> None:
            received.append((inbox_id, deliveries, told))
            if len(received) == 1:
                await asyncio.sleep(0.2)  # the first call is on the wire while three more wait

    class Agents:
        def agent(self, org_id: int, user_id: int) -> SlowAgent:
            return SlowAgent()

    def told(before: int, event_id: int, message_id: int) -> tuple[int, int, str, dict[str, Any], str]:
        return (before, event_id, "message", {"transaction_id": 11, "message": {"id": message_id}}, "2026-12-07")

    async def run() -> None:
        link = AgentLink(1, 7, Settings(actor_call_timeout_s=2.0), lambda: Agents(),  # type: ignore[arg-type,return-value]
                         lambda: None)
        link.deliver(5, 11, [{"id": 1}])
        await asyncio.sleep(0.05)
        link.deliver(5, 11, [{"id": 2}], [told(0, 20, 2)])
        link.deliver(5, 12, [{"id": 3}])
        link.deliver(5, 11, [{"id": 4}, {"id": 5}], [told(20, 21, 4), told(21, 22, 5)])
        await asyncio.sleep(0.4)

    asyncio.run(run())
    assert received == [(7, [(11, [{"id": 1}])], None),
                        (7, [(11, [{"id": 2}]), (12, [{"id": 3}]), (11, [{"id": 4}, {"id": 5}])],
                         [told(0, 20, 2), told(20, 21, 4), told(21, 22, 5)])]


def test_an_inbox_looks_up_a_present_agent_before_offering_and_never_wakes_an_offline_one() -> None:
    """A member's snapshot that says it is present has the inbox look its actor up then, so a customer's first
    offer does not wait for it; an offline member's does not (a lookup would activate a deactivated agent)."""
    from actors.agent_link import AgentLink
    from config.settings import Settings

    looked_up: list[int] = []

    class Agents:
        def agent(self, org_id: int, user_id: int) -> object:
            looked_up.append(user_id)
            return object()

    def snapshot(user_id: int, status: str) -> dict[str, Any]:
        return {"user_id": user_id, "status": status, "max_concurrent": 2, "active_count": 0,
                "has_pending_offer": False, "idle_since": None, "version": [1, 1]}

    link = AgentLink(1, 1, Settings(), lambda: Agents(), lambda: None)  # type: ignore[arg-type,return-value]
    link.load(frozenset({5, 6, 7}), {})
    assert link.update(snapshot(5, "available"))
    assert link.update(snapshot(6, "offline"))
    assert link.update(snapshot(7, "away"))
    assert not link.update(snapshot(8, "available"))  # not a member of this inbox
    assert looked_up == [5, 7]
