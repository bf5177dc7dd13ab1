"""An open workspace socket while its agent's actor restarts, Ray-free: the stream behind it waits the restart out
for the API's restart grace and goes on from its cursor; an actor not back by then ends it with ActorUnavailable,
which the socket's endpoint closes with 1013 (try again later). The same with a real restart on Ray:
`tests/test_routing_recovery.py`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from actors.directory import ActorUnavailable
from gateway.conversation_places import ConversationPlaces
from gateway.routers import agents as agents_router


class _RestartingAgent:
    """The agent's actor through its proxy: its first stream shows the events it has, then the process dies and
    stays unavailable for `down_for_s`; after that it is back, with one event more."""

    def __init__(self, down_for_s: float) -> None:
        self.events: list[dict[str, Any]] = [{"id": 1, "type": "offer"}, {"id": 2, "type": "status"}]
        self.down_for_s = down_for_s
        self.down_until: float | None = None
        self.streams_from: list[int] = []

    def _check_up(self) -> None:
        if self.down_until is not None and time.monotonic() < self.down_until:
            raise ActorUnavailable("agent:1:7: restarting")

    async def stream(self, method: str, position: int) -> AsyncIterator[list[dict[str, Any]]]:
        assert method == "stream_events"
        self._check_up()
        self.streams_from.append(position)
        yield [e for e in self.events if e["id"] > position]
        if self.down_until is None:  # the crash, once
            self.down_until = time.monotonic() + self.down_for_s
            self.events.append({"id": 3, "type": "assigned"})
            raise ActorUnavailable("agent:1:7: died")
        await asyncio.Event().wait()  # an open stream with nothing new

    async def last_event_id(self) -> int:
        self._check_up()
        return max(e["id"] for e in self.events)


class _Socket:
    def __init__(self) -> None:
        self.sent: list[int] = []
        self.all_shown = asyncio.Event()

    async def send_json(self, event: dict[str, Any]) -> None:
        self.sent.append(event["id"])
        if self.sent == [1, 2, 3]:
            self.all_shown.set()


async def _run(agent: _RestartingAgent, socket: _Socket, within_s: float) -> BaseException | None:
    """The stream's end (None: still open once every event was shown, or after `within_s`)."""
    stream = asyncio.ensure_future(agents_router._send_events(
        socket, lambda: agent, 0, 1, ConversationPlaces()))  # type: ignore[arg-type]
    shown = asyncio.ensure_future(socket.all_shown.wait())
    await asyncio.wait({stream, shown}, timeout=within_s, return_when=asyncio.FIRST_COMPLETED)
    shown.cancel()
    if not stream.done():
        stream.cancel()
        return None
    return stream.exception()


def test_a_stream_whose_agent_is_back_within_the_grace_goes_on_from_its_cursor(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agents_router, "RESTART_GRACE_S", 3.0)
    agent, socket = _RestartingAgent(down_for_s=0.4), _Socket()
    assert asyncio.run(_run(agent, socket, within_s=5.0)) is None
    assert socket.sent == [1, 2, 3]  # nothing shown twice, nothing missed
    assert agent.streams_from == [0, 2]


def test_a_stream_whose_agent_is_not_back_within_the_grace_ends_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agents_router, "RESTART_GRACE_S", 0.3)
    agent, socket = _RestartingAgent(down_for_s=30.0), _Socket()
    # Ended within 5 s by the grace, long before the agent would be back (30 s).
    ended = asyncio.run(_run(agent, socket, within_s=5.0))
    assert isinstance(ended, ActorUnavailable)  # the endpoint closes the socket with 1013
    assert socket.sent == [1, 2]
