"""A ~10-second run of the benchmark harness (`wa-router bench --smoke`) on its own stack (a three-node cluster
of this machine), the design's skeleton and the actor ceiling, each briefly.

Only correctness is asserted: nothing lost, duplicated or double-assigned. Timings never are (the
machine is shared); they are the benchmark's business (`make bench`).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import asyncpg


def test_bench_smoke_run_on_a_three_node_cluster_loses_nothing(tmp_path: Path) -> None:
    """`wa-router bench --smoke --cluster-workers 2`: the harness's whole smoke, its gateway joined to a head and
    two worker nodes. One run checked for everything a single-node smoke is (the single-node stack is what
    `make bench` runs; the gateway starting its own Ray is `wa-router demo`'s, tests/test_demo.py) and for the
    cluster's report."""
    output = tmp_path / "cluster.json"
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "bench", "--smoke", "--cluster-workers", "2",
                           "--output", str(output)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(output.read_text())
    (step,) = report["steps"]
    assert step["acknowledged"] > 0, step["ack_failure_examples"]
    assert (step["lost"], step["duplicated"], step["double_assigned"]) == (0, 0, 0)
    assert report["lost_total"] == report["duplicated_total"] == report["double_assigned_total"] == 0
    nodes = {node["node_id"] for node in report["cluster"]["nodes"]}
    assert len(nodes) == 3
    placement = report["cluster"]["placement"]
    assert sum(placement["InboxActor"].values()) == report["workload"]["inboxes"]
    assert set(placement["InboxActor"]) | set(placement["AgentActor"]) <= nodes
    # 4 inboxes and 9 agents placed at random over 3 nodes: all on one node once in ~530,000 runs.
    assert len(set(placement["InboxActor"]) | set(placement["AgentActor"])) >= 2, placement


def test_design_skeleton_carries_every_message_to_a_stream_once(tmp_path: Path) -> None:
    """The design ceiling's skeleton (`python -m bench.skeleton`): webhooks through inbox and agent actors
    back to the gateway on the agents' streams; only that every message arrives once is asserted."""
    output = tmp_path / "skeleton.json"
    done = subprocess.run([sys.executable, "-m", "bench.skeleton", "--rates", "40", "--duration", "3",
                           "--inboxes", "2", "--agents", "4", "--output", str(output)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(output.read_text())
    (step,) = report["steps"]
    assert step["posted"] > 0 and step["acknowledged"] == step["posted"]
    assert (step["lost"], step["duplicated"]) == (0, 0)
    assert step["webhook_to_stream_ms"]["count"] == step["posted"]


def test_actor_ceiling_measures_both_empty_actors(tmp_path: Path) -> None:
    """`python -m bench.ceiling_actor`: raw call throughput, and the two baselines an idle agent actor is
    compared with, an empty actor and an empty one of an agent's shape (its stream read once), and that shape
    after serving calls, with Ray's task events off and on; the CPU of a call and of a stream item at the
    product's pace. The idle CPU's window is short (0.5 s, not 5 s): no
    figure is asserted here, only that each is measured."""
    done = subprocess.run([sys.executable, "-m", "bench.ceiling_actor", "1", "0.5"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["calls_per_s"] > 0
    paced = report["paced"]
    assert paced["calls"] >= 10 and paced["pace_ms"] == 20
    assert all(paced[key] is not None for key in ("call_caller_cpu_ms", "call_callee_cpu_ms",
                                                   "stream_item_consumer_cpu_ms", "stream_item_producer_cpu_ms"))
    assert report["empty_actor_uss_mib"] > 0 and report["empty_routing_actor_uss_mib"] > 0
    assert report["served_calls"] == 5000
    assert report["served_routing_actor_uss_mib"] > 0 and report["served_routing_actor_task_events_uss_mib"] > 0
    assert report["empty_actor_idle_cpu_percent"] >= 0


def test_the_bench_counts_postgresql_connections_by_whose_they_are(postgres_url: str) -> None:
    """`postgres_connections` of a PostgreSQL step: peaks of the database's connections, of agents' own and of
    the agent store actors' (by `application_name`), the sampler's own connection left out."""
    from bench.counters import PostgresConnections

    async def sample_while_held() -> dict[str, int]:
        dsn = postgres_url.replace("postgresql+asyncpg://", "postgresql://")
        held = [await asyncpg.connect(dsn, server_settings={"application_name": name}) for name in
                ("wa-router agent 7", "wa-router agent-store 0", "wa-router agent-store 1", "other")]
        try:
            sampler = PostgresConnections.start_for(postgres_url)
            assert sampler is not None
            await asyncio.sleep(1.2)
            return sampler.stop()
        finally:
            for connection in held:
                await connection.close()

    peaks = asyncio.run(sample_while_held())
    assert peaks["samples"] >= 2
    assert (peaks["peak_agents"], peaks["peak_agent_store_actors"]) == (1, 2)
    assert peaks["peak_all"] >= 4  # these four, and whatever else the session keeps open on this database
    assert PostgresConnections.start_for("sqlite+aiosqlite:///x.db") is None
