"""Two gateways of one deployment under load, one SIGKILLed and restarted: the fault-injection engine with a
second gateway.

Two `wa-router serve` processes joined to one Ray cluster (the same namespace, so one deployment holding the
store's lease) share a PostgreSQL store and the encryption key. Signed webhooks (with Meta-style redeliveries)
alternate between them, as a Service spreads Meta's posts over the pods; agents on WebSocket streams work
through one or the other (offers, replies, closes, presence). Midway through the second gateway is SIGKILLed
(a burst of deliveries just before) and restarted on its port: every delivery it did not acknowledge is
retried on the other gateway, as Meta's retry reaches a live pod. The engine's invariants then hold the run to
0 lost, duplicated, double-assigned and stuck; every offer pending at the kill resolved; every reply sent once.

`python -m tests.two_gateways` runs a short variant; `--long` the soak's (`wa-router soak` runs it after the
node-loss soak). `make test` runs the scenario's smoke, `tests/test_two_gateways.py`. The last line printed
is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray

from meta.simulator.state import SimulatorState
from tests.fault_injection import SHORT, FaultPlan, _database, run_fault_injection

# One gateway kill and nothing else: what is measured is the pair's handover alone.
_GATEWAY_ONLY = replace(SHORT, inbox_kills=0, agent_kills=0, agent_store_kills=0, sender_kills=0, node_kills=0,
                        gateway_kills=1)
# Its quiescence bound leaves room for a busy machine (1-second offer timers ring out under heavy load).
SHORT_PAIR = replace(_GATEWAY_ONLY, messages=300, send_rate_per_s=20.0, agents=4, customers_per_inbox=4,
                     quiescence_timeout_s=120.0)
# 2,000 messages: 2,400 signed webhooks with the redeliveries.
LONG = replace(_GATEWAY_ONLY, messages=2000, send_rate_per_s=30.0, quiescence_timeout_s=180.0)


def run(plan: FaultPlan, log: Any = print) -> dict[str, Any]:
    from actors.ray_connection import RAY_SYSTEM_CONFIG
    from gateway.background_server import BackgroundServer
    from meta.simulator.app import create_simulator_app

    ray.init(address="local", namespace="wa-router-two-gateways", include_dashboard=False, log_to_driver=False,
             configure_logging=False, _system_config=RAY_SYSTEM_CONFIG)
    try:
        state = SimulatorState()
        with (BackgroundServer(create_simulator_app(state)) as simulator,
              tempfile.TemporaryDirectory(prefix="two-gateways-") as tmp, _database("postgres", Path(tmp)) as url):
            report = run_fault_injection(plan, database_url=url, database="postgres", simulator=state,
                                         simulator_url=simulator.url, workdir=Path(tmp), log=log, gateways=2)
            log(report.render())
            f = report.figures
            return {"ok": report.ok, "violations": [v.invariant for v in report.violations],
                    "messages": f["messages"], "deliveries": f["deliveries"], "acknowledged": f["acknowledged"],
                    "acked_by_gateway": f["acked_by_gateway"], "retried": f["retried"], "kills": f["kills"],
                    "gateway_starts": f["gateway_starts"], "lost": f["lost"], "duplicated": f["duplicated"],
                    "double_assigned": f["double_assigned"], "stuck": f["stuck"],
                    "offers_pending_at_kill": f["offers_pending_at_kill"],
                    "pending_unresolved": f["pending_unresolved"], "replies_accepted": f.get("replies_accepted"),
                    "replies_at_meta": f.get("replies_at_meta"), "wall_s": round(f["wall_s"]),
                    "summary": report.summary_line()}
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Two gateways of one deployment on PostgreSQL, one SIGKILLed "
                                                 "and restarted under load.")
    parser.add_argument("--long", action="store_true", help="the soak's sizes (default: a short variant)")
    args = parser.parse_args(argv)
    result = run(LONG if args.long else SHORT_PAIR, log=lambda line: print(line, flush=True))
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
