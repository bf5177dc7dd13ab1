"""Issue 6's fault-injection proof, short variant: SIGKILLs under load on SQLite and PostgreSQL.

The gateway runs as its own process joined to the session's Ray instance; see `tests/fault_injection.py`
for the scenario and the invariants. `make soak` runs the long variant of the same engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from meta.simulator.state import SimulatorState
from tests.fault_injection import SHORT, request_violations, run_fault_injection
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
    # The run itself must have been the storm it claims: every kill landed and came back.
    kills = SHORT.kills_on(backend)
    assert report.figures["kills"] == kills and report.figures["recoveries"] == kills, report.render()


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
