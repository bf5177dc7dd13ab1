"""The fault-injection proof, short variant: SIGKILLs under load on SQLite and PostgreSQL.

The gateway runs as its own process joined to the session's Ray instance; see `tests/fault_injection.py`
for the scenario and the invariants. The short variant kills one actor of each kind and the gateway once
(every kind of SIGKILL, each once); `make soak` runs the long variant of the same engine (many of each).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from meta.simulator.state import GivenUpStatus, SentMessage, SimulatorState
from tests.fault_injection import SHORT, Reply, judge_replies, request_violations, run_fault_injection
from tests.support import POSTGRES_ADMIN_URL, create_postgres_database, drop_postgres_database, postgres_database_url


@pytest.fixture(params=["sqlite", "postgres"])
def fault_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(backend, a fresh store URL): each run starts empty, and no in-process gateway shares it."""
    if request.param == "sqlite":
        yield "sqlite", f"sqlite+aiosqlite:///{tmp_path / 'wa_router.db'}"
        return
    name = asyncio.run(create_postgres_database())
    if name is None:  # this proof must not be skipped silently
        pytest.fail(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: the fault-injection proof needs it")
    yield "postgres", postgres_database_url(name)
    asyncio.run(drop_postgres_database(name))


@pytest.mark.ray
@pytest.mark.fault_injection
def test_no_message_lost_and_no_conversation_double_held_through_sigkills(
        ray_instance: None, simulator: tuple[SimulatorState, str], fault_store: tuple[str, str],
        tmp_path: Path) -> None:
    backend, database_url = fault_store
    state, simulator_url = simulator
    report = run_fault_injection(SHORT, database_url=database_url, database=backend, simulator=state,
                                 simulator_url=simulator_url, workdir=tmp_path)
    print(report.render())
    assert report.ok, "\n" + report.render()
    # The run itself must have been the storm it claims: every kill landed and came back, one of each kind.
    kills = SHORT.kills_on(backend)
    assert report.figures["kills"] == kills and report.figures["recoveries"] == kills, report.render()
    kinds = {"inbox", "agent", "sender", "gateway"} | ({"agent-store"} if backend == "postgres" else set())
    assert set(report.figures["kills_by_kind"]) == kinds, report.render()


def test_the_proof_counts_every_5xx_and_every_unanswered_agent_request_as_a_violation() -> None:
    """The check checked with deliberate failures: a 5xx whose detail ends in any word, and a request that got
    no answer within its deadline, each fail the run; a clean worker adds nothing."""
    failing = SimpleNamespace(agent=SimpleNamespace(id=7), unanswered=["close 12"],
                              server_errors=["accept 12 500 the inbox is reloading its state; retry shortly"])
    clean = SimpleNamespace(agent=SimpleNamespace(id=8), unanswered=[], server_errors=[])
    found = {invariant: items for invariant, items in request_violations(cast(Any, [failing, clean]))}
    assert found["agent requests answered 5xx (503s retried for 60 s first)"] == [
        "agent 7: accept 12 500 the inbox is reloading its state; retry shortly"]
    assert found["agent requests left unanswered past their deadline"] == ["agent 7: close 12"]
    assert all(not items for _, items in request_violations(cast(Any, [clean])))


def test_the_proof_counts_every_lost_doubled_reordered_or_unread_reply_as_a_violation() -> None:
    """The replies' check checked with deliberate failures against a clean baseline."""
    def at_meta(text: str, to: str, wamid: str) -> SentMessage:
        return SentMessage(id=wamid, phone_number_id="100", to=to, type="text", payload={"text": {"body": text}},
                           timestamp=0.0)

    replies = [Reply("r1", 1, 7, "202", 11), Reply("r2", 1, 7, "202", 12), Reply("r3", 2, 7, "202", 13),
               Reply("r4", 2, 7, "in doubt (ReadError)"), Reply("r5", 2, 7, "409")]
    outbox = [(11, "r1", "read", "w1", "100", "c1", None, None), (12, "r2", "read", "w2", "100", "c1", None, None),
              (13, "r3", "read", "w3", "100", "c2", None, None), (14, "r4", "read", "w4", "100", "c2", None, None)]
    clean = [at_meta("r1", "c1", "w1"), at_meta("r2", "c1", "w2"), at_meta("r3", "c2", "w3"),
             at_meta("r4", "c2", "w4")]
    violations, figures = judge_replies(replies, outbox, clean)
    assert violations == []
    assert figures["replies_accepted"] == 3 and figures["replies_in_doubt_sent"] == 1
    assert figures["replies_refused"] == {"409": 1}

    # r2 before r1 for c1, r3 never sent, r4 (in doubt) sent twice, r1 stuck at `delivered`, a stranger.
    broken_outbox = [(11, "r1", "delivered", "w1", "100", "c1", None, None), *outbox[1:]]
    broken = [at_meta("r2", "c1", "w2"), at_meta("r1", "c1", "w1"), at_meta("r4", "c2", "w4"),
              at_meta("r4", "c2", "w5"), at_meta("nobody wrote this", "c2", "w6")]
    found = {v.invariant: v.examples for v in judge_replies(replies, broken_outbox, broken)[0]}
    assert found["replies answered 202 never sent to Meta"] == ["r3 (tx 2): outbox read"]
    assert found["replies sent to Meta more than once"] == ["r4 x2"]
    assert found["messages at Meta that no agent wrote"] == ["nobody wrote this"]
    assert found["customers who got replies out of outbox order"] == ["100/c1: ['r2', 'r1']"]
    assert [e.split(":")[0] for e in found[
        "replies answered 202 without Meta's statuses applied (outbox row not read with Meta's wamid)"]] == ["r1"]

    # Where a reply's statuses stopped: Meta gave up posting one (the receiver never answered 200), and what the
    # store took of the others.
    unread = "replies answered 202 without Meta's statuses applied (outbox row not read with Meta's wamid)"
    given_up = [GivenUpStatus("w1", "read", 41, "503")]
    found = {v.invariant: v.examples for v in judge_replies(replies, broken_outbox, broken, given_up,
                                                               {"w1": ["sent", "delivered"]})[0]}
    assert found[unread] == ["r1: delivered wamid w1 (Meta's w1); stored statuses ['sent', 'delivered']; "
                             "Meta gave up posting read after 41 posts (last answer 503)"]
    found = {v.invariant: v.examples for v in judge_replies(replies, broken_outbox, broken, [], {})[0]}
    assert found[unread] == ["r1: delivered wamid w1 (Meta's w1); stored statuses []; "
                             "no post given up (each answered 200, or still retried)"]
