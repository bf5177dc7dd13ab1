"""An agent's event stream is one Ray streaming call (`AgentActor.stream_events`), read by the gateway.

Ray does not stop an actor's generator when its caller goes away, so a stream must end by itself
(after a quiet spell, or its lifetime) and a caller that leaves must cancel it; a reader that opens
the next stream from its cursor misses nothing. Driven against a real agent actor through the same
proxy the gateway uses.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from actors.directory import Proxy
from actors.ray_directory import RayDirectory
from config.settings import Settings
from store.db import Database
from tests.routing_support import Agent, Scenario, customer_id
from tests.store_rows import held_conversation
from tests.support import eventually


def agent_proxy(sc: Scenario, agent: Agent) -> Proxy:
    settings = Settings(database_url=sc.gateway.database_url, ray_namespace=sc.gateway.namespace)
    return RayDirectory(settings).agent(sc.org.id, agent.id)


def push(proxy: Proxy, count: int, start: int = 0) -> None:
    async def run() -> None:
        for n in range(start, start + count):
            await proxy.push_event("note", {"n": n})

    asyncio.run(run())


def test_a_quiet_stream_ends_by_itself_and_the_next_one_resumes_from_the_cursor(sc: Scenario) -> None:
    (a,) = sc.agents(1)
    proxy = agent_proxy(sc, a)
    cursor = asyncio.run(proxy.last_event_id())
    push(proxy, 3)

    async def read(after: int) -> tuple[list[dict[str, Any]], float]:
        started = time.monotonic()
        # Quiet half a second, with or without work.
        got = [e for batch in [b async for b in proxy.stream("stream_events", after, 0.5, 120.0, 500, 0.5)]
               for e in batch]
        return got, time.monotonic() - started

    events, took = asyncio.run(read(cursor))
    assert [(e["type"], e["n"]) for e in events] == [("note", 0), ("note", 1), ("note", 2)]
    assert took < 12  # ended after half a second without an event, not the 15 s default
    push(proxy, 2, start=3)
    more, _ = asyncio.run(read(events[-1]["id"]))
    assert [e["n"] for e in more] == [3, 4]


def test_a_stream_waits_longer_while_the_agent_has_no_conversation(sc: Scenario) -> None:
    """Without an open conversation no follow-up can be missed, so the quiet allowed is the longer one (each stream
    opened again is an actor call); once the stream shows a conversation taken on, the short one applies again."""
    (a,) = sc.agents(1)
    inbox = sc.inbox([a])
    proxy = agent_proxy(sc, a)

    async def quiet_spell(after: int, idle_without_work_s: float) -> tuple[int, float]:
        """(the last event's id, seconds the stream stayed open after its first batch)."""
        first = None
        async for batch in proxy.stream("stream_events", after, 0.5, 60.0, 500, idle_without_work_s):
            after = int(batch[-1]["id"])
            first = first or time.monotonic()
        assert first is not None
        return after, time.monotonic() - first

    cursor = asyncio.run(proxy.last_event_id())
    push(proxy, 1)
    cursor, open_for = asyncio.run(quiet_spell(cursor, 3.0))
    assert open_for >= 2.5  # not ended after the half second allowed while the agent has work

    customer = customer_id()
    sc.send(customer)
    tx_id = sc.wait_state(sc.tx_of(customer, inbox_id=inbox)["id"], "offered", offered_to=a.id)["id"]
    sc.do(tx_id, "accept", a)
    _, open_for = asyncio.run(quiet_spell(cursor, 40.0))
    assert open_for < 30  # the conversation shown: half a second of quiet ends it, not the forty allowed without


def test_a_stream_ends_at_its_lifetime_while_events_flow_and_nothing_is_lost(sc: Scenario) -> None:
    (a,) = sc.agents(1)
    proxy = agent_proxy(sc, a)
    cursor = asyncio.run(proxy.last_event_id())

    async def run() -> list[int]:
        async def produce() -> None:
            for n in range(40):
                await proxy.push_event("note", {"n": n})
                await asyncio.sleep(0.05)

        producer = asyncio.ensure_future(produce())
        seen: list[int] = []
        position = cursor
        streams = 0
        while len(seen) < 40:
            streams += 1
            async for batch in proxy.stream("stream_events", position, 5.0, 0.4):
                seen += [int(e["n"]) for e in batch]
                position = int(batch[-1]["id"])
        await producer
        assert streams > 2  # two seconds of events outlived several 0.4 s streams
        return seen

    assert asyncio.run(run()) == list(range(40))


def test_a_reader_that_leaves_cancels_its_stream(sc: Scenario) -> None:
    (a,) = sc.agents(1)
    proxy = agent_proxy(sc, a)
    cursor = asyncio.run(proxy.last_event_id())

    async def read_one_and_leave() -> int:
        async for _batch in proxy.stream("stream_events", cursor, 600.0, 600.0):
            return int((await proxy.ping())["stream_readers"])
        raise AssertionError("the stream ended without the pushed event")

    push(proxy, 1)
    assert asyncio.run(read_one_and_leave()) == 1
    # Left after one batch: the generator (which would wait ten minutes for the next) is cancelled.
    eventually(lambda: readers(proxy) == 0, timeout=10, what="the stream cancelled")


def readers(proxy: Proxy) -> int:
    return int(asyncio.run(proxy.ping())["stream_readers"])


def test_deliveries_joined_in_one_call_show_each_message_once_in_order(sc: Scenario) -> None:
    (a,) = sc.agents(1)
    proxy = agent_proxy(sc, a)
    cursor = asyncio.run(proxy.last_event_id())

    async def conversations() -> tuple[int, int, list[int]]:
        # Its messages attached to them in the store: an agent shows a message only with its conversation.
        db = Database(sc.gateway.database_url, pool_size=1)
        try:
            one, (m0, m1, m3) = await held_conversation(db, sc.org.id, a.id, 3)
            two, (m2,) = await held_conversation(db, sc.org.id, a.id, 1)
        finally:
            await db.dispose()
        return one, two, [m0, m1, m2, m3]

    one, two, ids = asyncio.run(conversations())
    message = [{"id": message_id, "summary": f"m{n}"} for n, message_id in enumerate(ids)]

    async def run() -> list[tuple[int, str]]:
        # What an inbox's mailbox sends when deliveries queued behind a call on the wire: a retried
        # delivery (message 0 again) and two conversations in one call.
        await proxy.deliver(7, [(one, [message[0]])])
        await proxy.deliver(7, [(one, [message[0], message[1]]), (two, [message[2]]),
                                (one, [message[1], message[3]])])
        shown: list[tuple[int, str]] = []
        async for batch in proxy.stream("stream_events", cursor, 0.5, 120.0, 500, 0.5):
            shown += [(e["transaction_id"], e["message"]["summary"]) for e in batch if e["type"] == "message"]
        return shown

    assert asyncio.run(run()) == [(one, "m0"), (one, "m1"), (two, "m2"), (one, "m3")]
