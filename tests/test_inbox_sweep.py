"""The gateways' sweep of the store: one read a pass for every inbox, and an inbox's actor told only what it may have
missed (a configuration change, a newer owner, a message no forward brought). An idle inbox reads nothing.

The decision is pure (`actors.inbox_sweep`); the sweep's read and calls run on a real store (SQLite and PostgreSQL)
with inbox actors that record what they are told, and a real inbox actor in this process acts on what it is told.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import event, update
from sqlalchemy.engine import Engine

from actors.inbox_sweep import InboxSweep, InboxTold, InboxWatched
from actors.routing_client import RoutingClient
from store.db import Database
from store.tables import Inbox
from tests.test_close_while_delivering import _conversation, _crash
from tests.test_opening_in_one_commit import (
    _conversations_of,
    _counting,
    _live_inbox,
    _new_customer,
    _store,
    _until,
)

# ------------------------------------------------------------------ the decision


def _row(inbox: int, version: int = 1, epoch: int = 1, oldest: int | None = None) -> InboxWatched:
    return InboxWatched(org_id=7, inbox_id=inbox, config_version=version, owner_epoch=epoch, oldest_unattached=oldest)


def _pass(sweep: InboxSweep, *rows: InboxWatched) -> dict[int, InboxTold]:
    """One pass whose every call is answered."""
    due = sweep.due(rows)
    for told in due:
        sweep.told(told)
    return {told.inbox_id: told for told in due}


def test_every_inbox_is_told_once_after_the_start_then_only_what_changed() -> None:
    sweep = InboxSweep()
    first = _pass(sweep, _row(1), _row(2, oldest=40))
    assert set(first) == {1, 2}
    assert not first[1].unattached and first[2].unattached  # a gateway that died may have left it unforwarded
    assert _pass(sweep, _row(1), _row(2)) == {}
    assert _pass(sweep, _row(1, version=2), _row(2)) == {1: InboxTold(7, 1, 2, 1, False)}
    assert _pass(sweep, _row(1, version=2), _row(2, epoch=3)) == {2: InboxTold(7, 2, 1, 3, False)}
    assert _pass(sweep, _row(1, version=2), _row(2, epoch=3)) == {}


def test_a_message_is_told_only_once_it_stayed_unattached_from_one_pass_to_the_next() -> None:
    sweep = InboxSweep()
    _pass(sweep, _row(1))
    # Being forwarded: each pass finds another oldest message, attached before the next pass.
    assert _pass(sweep, _row(1, oldest=10)) == {}
    assert _pass(sweep, _row(1, oldest=11)) == {}
    assert _pass(sweep, _row(1)) == {}
    # Left behind (its forward lost): still the oldest a pass later, whatever came after it.
    assert _pass(sweep, _row(1, oldest=12)) == {}
    assert _pass(sweep, _row(1, oldest=12)) == {1: InboxTold(7, 1, 1, 1, True)}
    # Told, but still there (the inbox could not attach it yet): told again, every pass, until it is attached.
    assert _pass(sweep, _row(1, oldest=12)) == {1: InboxTold(7, 1, 1, 1, True)}
    assert _pass(sweep, _row(1)) == {}


def test_an_inbox_whose_actor_did_not_answer_is_told_again_and_a_deleted_one_is_forgotten() -> None:
    sweep = InboxSweep()
    assert {t.inbox_id for t in sweep.due([_row(1), _row(2)])} == {1, 2}  # no answer from either
    due = sweep.due([_row(1), _row(2)])
    assert {t.inbox_id for t in due} == {1, 2}
    sweep.told(due[0])
    assert [t.inbox_id for t in sweep.due([_row(1), _row(2)])] == [2]
    sweep.told(InboxTold(7, 2, 1, 1, False))
    assert len(sweep) == 2
    assert sweep.due([_row(2)]) == [] and len(sweep) == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.integers(1, 3), st.one_of(st.none(), st.integers(1, 4)),
                          st.booleans()), min_size=1, max_size=30))
def test_an_inbox_is_told_exactly_what_it_may_not_know(passes: list[tuple[int, int, int | None, bool]]) -> None:
    """Over any run of passes (version, epoch, oldest unattached, whether the call is answered): an inbox is told
    when its version or epoch differs from the last it answered to, or a message stayed the oldest from one pass to
    the next, and only then (or when it never answered); the flag says whether a message is to be read."""
    sweep = InboxSweep()
    answered: tuple[int, int] | None = None
    previous: int | None = None
    for version, epoch, oldest, answers in passes:
        due = sweep.due([_row(1, version, epoch, oldest)])
        stuck = oldest is not None and oldest == previous
        expected = answered is None or answered != (version, epoch) or stuck
        assert bool(due) == expected
        if due:
            assert due[0].unattached == (stuck or (answered is None and oldest is not None))
            if answers:
                sweep.told(due[0])
                answered = (version, epoch)
        previous = oldest


# ------------------------------------------------------------------ the sweep on a real store


class _RecordingInbox:
    def __init__(self, calls: list[tuple[int, int, int, bool]], inbox_id: int, failing: set[int]) -> None:
        self._calls, self._inbox_id, self._failing = calls, inbox_id, failing

    async def store_watched(self, version: int, epoch: int, unattached: bool) -> dict[str, Any]:
        if self._inbox_id in self._failing:
            raise ConnectionError("actor restarting")
        self._calls.append((self._inbox_id, version, epoch, unattached))
        return {"inbox_id": self._inbox_id, "exists": True, "epoch": epoch}


class _RecordingDirectory:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int, bool]] = []
        self.failing: set[int] = set()
        self.stopped: set[int] = set()  # inboxes whose actor does not run
        self.started: list[int] = []

    def inbox(self, org_id: int, inbox_id: int) -> _RecordingInbox:
        if inbox_id in self.stopped:
            self.started.append(inbox_id)
        return _RecordingInbox(self.calls, inbox_id, self.failing)

    def inbox_if_running(self, org_id: int, inbox_id: int) -> _RecordingInbox | None:
        return None if inbox_id in self.stopped else _RecordingInbox(self.calls, inbox_id, self.failing)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_sweep_reads_every_inbox_in_one_statement_and_tells_each_what_it_missed(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    url, _ = _store(backend, tmp_path, request)

    async def run() -> None:
        db = Database(url, pool_size=1)
        try:
            inboxes = [(await _conversation(db))[2] for _ in range(5)]
            directory = _RecordingDirectory()
            client = RoutingClient(directory, db)  # type: ignore[arg-type]  # records instead of calling actors
            statements: list[str] = []

            def counted(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
                statements.append(statement)

            event.listen(Engine, "before_cursor_execute", counted)
            try:
                first = await client.sweep()
            finally:
                event.remove(Engine, "before_cursor_execute", counted)
            assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1, statements
            # Every inbox of the store (a shared test database may hold others' too), each told once.
            assert set(inboxes) <= {t.inbox_id for t in first}
            assert [call for call in sorted(directory.calls) if call[0] in inboxes] == [
                (inbox, 0, 0, False) for inbox in inboxes]  # as created, never activated

            directory.calls.clear()
            assert await _ours(client.sweep(), inboxes) == []
            assert [call for call in directory.calls if call[0] in inboxes] == []
            # A message no forward brought, and a configuration change nobody was told of.
            await _new_customer(db, *(await _org_of(db, inboxes[0])), "lost")
            async with db.session() as session:
                await session.execute(update(Inbox).where(Inbox.id == inboxes[1])
                                      .values(config_version=Inbox.config_version + 1))
            directory.failing.add(inboxes[1])
            # The message may be on its way; the changed inbox does not answer.
            assert await _ours(client.sweep(), inboxes) == []
            directory.failing.clear()
            told = await _ours(client.sweep(), inboxes)
            assert sorted((t.inbox_id, t.config_version, t.unattached) for t in told) == [
                (inboxes[0], 0, True), (inboxes[1], 1, False)]
            assert [call for call in sorted(directory.calls) if call[0] in inboxes] == [
                (inboxes[0], 0, 0, True), (inboxes[1], 1, 0, False)]

            # An inbox whose actor does not run: a new configuration starts no process for it (one that starts reads
            # the store), a message left unattached does.
            directory.calls.clear()
            directory.stopped = {inboxes[0], inboxes[2]}
            async with db.session() as session:
                await session.execute(update(Inbox).where(Inbox.id == inboxes[2])
                                      .values(config_version=Inbox.config_version + 1))
            told = await _ours(client.sweep(), inboxes)
            assert sorted((t.inbox_id, t.unattached) for t in told) == [(inboxes[0], True), (inboxes[2], False)]
            assert directory.started == [inboxes[0]]
            assert [call for call in directory.calls if call[0] in inboxes] == [(inboxes[0], 0, 0, True)]
            assert await _ours(client.sweep(), inboxes) == [told[0]]  # still unattached: told until attached
        finally:
            await db.dispose()

    asyncio.run(run())


async def _ours(sweep: Awaitable[list[InboxTold]], inboxes: list[int]) -> list[InboxTold]:
    return [told for told in await sweep if told.inbox_id in inboxes]


async def _org_of(db: Database, inbox_id: int) -> tuple[int, int]:
    async with db.session() as session:
        inbox = await session.get(Inbox, inbox_id)
        assert inbox is not None
        return inbox.org_id, inbox_id


# ------------------------------------------------------------------ an inbox's actor told what the sweep found


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_an_idle_inbox_reads_nothing_and_acts_on_what_a_sweep_tells_it(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    url, settings_ = _store(backend, tmp_path, request)
    settings_ = dataclasses.replace(settings_, inbox_sync_interval_s=0.05)  # its control loop, turning quickly

    async def run() -> None:
        db = Database(url, pool_size=1)
        org_id, inbox_id, _agent, inbox = await _live_inbox(db, settings_, let_go=True)
        try:
            reads = _counting(inbox, "read")
            await asyncio.sleep(0.6)  # a dozen turns of its control loop
            assert reads == []
            version, epoch = inbox.config.config_version, inbox._epoch

            # What a sweep read before this activation or reload changes nothing, and reads nothing.
            assert (await inbox.store_watched(version - 1, epoch - 1, False))["epoch"] == epoch
            assert (await inbox.store_watched(version, epoch, False))["epoch"] == epoch
            await asyncio.sleep(0.1)
            assert reads == [] and inbox._epoch == epoch

            # A message no forward brought: read and opened as its customer's conversation.
            customer, messages = await _new_customer(db, org_id, inbox_id, "lost forward")
            await inbox.store_watched(version, epoch, True)

            async def opened() -> bool:
                found = await _conversations_of(db, customer)
                return bool(found) and found[0][4] == [messages[0].id]

            await _until(opened, "the lost message's conversation opened")
            assert len(reads) >= 1

            # A configuration change nobody told the inbox of.
            async with db.session() as session:
                await session.execute(update(Inbox).where(Inbox.id == inbox_id).values(
                    config_version=Inbox.config_version + 1, reassign_after_s=90))
            await inbox.store_watched(version + 1, epoch, False)

            async def reloaded() -> bool:
                return inbox.config.config_version == version + 1 and inbox.config.reassign_after_s == 90

            await _until(reloaded, "the new configuration loaded")

            # A newer owner: the inbox takes it back from the store, under a newer epoch still.
            async with db.session() as session:
                await session.execute(update(Inbox).where(Inbox.id == inbox_id)
                                      .values(owner_epoch=Inbox.owner_epoch + 1))
            await inbox.store_watched(version + 1, epoch + 1, False)

            async def taken_back() -> bool:
                return inbox._activated and inbox._epoch > epoch + 1

            await _until(taken_back, "the inbox taken back")
        finally:
            await _crash(inbox)
            await db.dispose()

    asyncio.run(run())
