"""`make test`'s pytest: the suite's test files in a few pytest processes at once (`python -m tests.run_suite`).

Most of the suite's time is spent waiting, not computing: actor processes starting, offer timers, Meta's
pacing in the simulator, subprocess gateways, clusters and the demo coming up. So the test files are dealt
into SHARDS groups of about equal time (longest first, each to the least loaded group) and each group runs
as its own `pytest` process, with its own session fixtures: its own Ray instance, simulator, gateways and
PostgreSQL database. Nothing is shared between groups but the machine. Each group's output is printed
whole once it ends; the exit status is the worst of them.

    python -m tests.run_suite [--shards N] [pytest options, e.g. -m "not fuzz"]

`--shards 1` runs a single pytest process over the whole suite (the same tests).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SHARDS = 3

# Seconds each file takes in one of SHARDS pytest processes (summed from `--durations=0` of a whole `make test` on
# this 2-core machine in a fast hour, the other groups running beside it, its share of its process's session
# fixtures included), used only to deal the files out evenly. A file not listed counts DEFAULT_S.
WEIGHTS_S: dict[str, float] = {
    "test_fault_injection.py": 113, "test_bench_smoke.py": 112, "test_routing_v2.py": 59,
    "test_messaging_replies.py": 58, "test_routing_capacity.py": 54, "test_routing_modes_e2e.py": 52,
    "test_openapi_schemathesis.py": 49, "test_routing_flow.py": 48, "test_stats.py": 36,
    "test_cluster_placement.py": 35, "test_messaging_sender.py": 32, "test_demo.py": 32,
    "test_routing_recovery.py": 32, "test_customer_identity.py": 30, "test_agent_deactivation.py": 28,
    "test_store_backends.py": 27, "test_messaging_multi_org.py": 22, "test_api_inboxes.py": 21,
    "test_followups_at_intake.py": 21, "test_access_matrix.py": 21, "test_head_loss.py": 19,
    "test_local_ray_loopback.py": 16, "test_ws_auth_and_log_scrub.py": 16, "test_close_while_delivering.py": 15,
    "test_agent_store_actors.py": 14, "test_agent_event_stream.py": 14, "test_deploy_manifests.py": 13,
    "test_actions_read_nothing.py": 13, "test_sender_metrics.py": 12, "test_action_answers.py": 12,
    "test_credentials_rotation.py": 10, "test_api_paging.py": 10, "test_actor_secrets.py": 10,
    "test_routing_metrics.py": 9, "test_two_gateways.py": 9, "test_followups_told_to_agents.py": 9,
    "test_webhook_intake.py": 9, "test_metrics_under_load.py": 8, "test_messaging_whatsapp_back.py": 8,
    "test_webhook_pywa_shared.py": 6, "test_startup_refusals.py": 6, "test_snapshot_pushes.py": 6,
    "test_api_whatsapp_accounts.py": 6, "test_capacity_in_the_commit.py": 6, "test_agent_store.py": 6,
    "test_opening_in_one_commit.py": 5, "test_webhook_security.py": 5, "test_opening_without_a_read.py": 5,
    "test_meta_simulator_messaging.py": 4, "test_messaging_templates.py": 4, "test_meta_simulator.py": 4,
    "test_cli.py": 4, "test_graph_client.py": 4, "test_number_settings_owner.py": 4, "test_gateway_metrics.py": 4,
    "test_api_auth_orgs_users.py": 4, "test_bootstrap_and_settings.py": 4, "test_group_commit.py": 3,
    "test_store_busy.py": 3, "test_routing_properties.py": 3, "test_user_tokens.py": 3,
    "test_agent_reads_inbox_commits.py": 3, "test_inbox_sweep.py": 3, "test_health.py": 3, "test_smoke_flow.py": 2,
    "test_webhook_parser.py": 2, "test_sqlite_checkpoint.py": 2, "test_store_unavailable.py": 2,
    "test_follow_up_attach_and_close.py": 2, "test_actor_imports.py": 2, "test_inbox_metrics.py": 2,
    "test_logs.py": 2, "test_smoke_routing.py": 2, "test_openapi_refusals.py": 2, "test_routing_core_units.py": 1,
    "test_sqlite_writer_turns.py": 1, "test_inbox_activation.py": 1, "test_stream_links.py": 1,
    "test_webhook_parser_fuzz.py": 1, "test_route_order.py": 1, "test_customer_resolution_store.py": 1,
    "test_task_events.py": 1, "test_auth_throttle.py": 1, "test_idle_ping.py": 1, "test_readyz_probe.py": 1,
    "test_store_read.py": 1, "test_key_rotation.py": 1, "test_store_write.py": 1, "test_api_me.py": 1,
    "test_offer_plan.py": 1, "test_principal_cache.py": 1, "test_body_limits.py": 1, "test_stream_watch.py": 1,
    "test_licence_rules.py": 1, "test_free_heap.py": 1, "test_pacing.py": 1, "test_gc_tuning.py": 1,
    "test_private_files.py": 1, "test_deploy_health_check.py": 1,
}
DEFAULT_S = 1.0
# Files kept in one process. The storms (SIGKILLs under load, the benchmark's smoke, clusters of their own, the
# demo) each load the whole machine for a minute or more: one after another in one process, never two at
# once, as in a single pytest run; they share it with the other processes' lighter tests only. And the files
# sharing a costly session fixture start it once: the three-node cluster of `tests/cluster_checks.py`.
TOGETHER: list[tuple[str, ...]] = [
    ("test_fault_injection.py", "test_bench_smoke.py", "test_cluster_placement.py", "test_node_loss.py",
     "test_head_loss.py", "test_demo.py"),
]


def deal(files: list[Path], shards: int) -> list[list[Path]]:
    """Longest first, each unit (a file, or files kept TOGETHER) to the group with the least time so far."""
    units: list[list[Path]] = []
    for names in TOGETHER:
        unit = [p for p in files if p.name in names]
        if unit:
            units.append(unit)
    kept = {p for unit in units for p in unit}
    units += [[p] for p in files if p not in kept]
    groups: list[list[Path]] = [[] for _ in range(shards)]
    loads = [0.0] * shards

    def weight(unit: list[Path]) -> float:
        return sum(WEIGHTS_S.get(p.name, DEFAULT_S) for p in unit)

    for unit in sorted(units, key=lambda u: (-weight(u), u[0].name)):
        least = loads.index(min(loads))
        groups[least] += unit
        loads[least] += weight(unit)
    return [sorted(group) for group in groups if group]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.run_suite", description=__doc__.splitlines()[0],
                                     epilog="Any other option is passed to every pytest process.")
    parser.add_argument("--shards", type=int, default=int(os.environ.get("WA_ROUTER_TEST_SHARDS", SHARDS)))
    args, pytest_args = parser.parse_known_args(argv)
    files = sorted(TESTS.glob("test_*.py"))
    groups = deal(files, max(1, args.shards))
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="wa-router-suite-") as logs:
        running = []
        for index, group in enumerate(groups):
            log = (Path(logs) / f"shard-{index}.log").open("w+")
            # The cache plugin's files would be written by every process at once: off in the shards.
            command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *pytest_args,
                       *(str(p.relative_to(TESTS.parent)) for p in group)]
            running.append((index, group, log, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                                cwd=TESTS.parent)))
        print(f"{len(files)} test files in {len(groups)} pytest processes", flush=True)
        codes = []
        for index, group, log, process in running:
            while True:
                try:
                    code = process.wait()
                    break
                except KeyboardInterrupt:  # Ctrl-C: each pytest stops and reports, as a single one would
                    for *_, other in running:
                        if other.poll() is None:
                            other.send_signal(signal.SIGINT)
            log.seek(0)
            print(f"\n===== pytest {index + 1}/{len(groups)} ({len(group)} files: "
                  f"{', '.join(p.stem.removeprefix('test_') for p in group)}) exit {code} =====", flush=True)
            sys.stdout.write(log.read())
            log.close()
            codes.append(code)
    print(f"\n===== {len(groups)} pytest processes, exit {codes}, {time.monotonic() - began:.0f} s =====", flush=True)
    # 5 is pytest's "no tests collected": a group whose files the options deselected entirely is not a failure.
    failed = [code for code in codes if code not in (0, 5)]
    if failed:
        return failed[0]
    return 0 if 0 in codes else 5


if __name__ == "__main__":
    sys.exit(main())
