"""The design ceiling: the bare skeleton of this design (`bench/skeleton_server.py`) under the same
open-loop generator and workload schedule as the product, stepped until a rate fails.

A rate passes as the product's does: every webhook acknowledged with p99 ≤ the target, and every
message on its agent's stream exactly once within the drain time. Reported per step: offered and
achieved msg/s, acknowledgement and webhook → stream latencies (from the scheduled instant), and
CPU per message by process kind, so the product's figures can be read against what the design itself
costs on the same machine, in the same run.
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.options import DEFAULT_DESIGN_RATES
from bench.procstats import ProcessSampler
from bench.stack import stop_process, wait_http
from bench.stats import summary_ms
from bench.workload import WorkloadShape
from gateway.background_server import free_port

PY = sys.executable
DESIGN_STEP_S = 10.0
# Per-message CPU is read from these kinds (the generator is the harness's, not the design's).
DESIGN_KINDS = ("gateway", "inbox_actor", "agent_actor", "ray_system", "ray_worker_other")


def _step(server_port: int, spec: dict[str, Any], sampler: ProcessSampler, workdir: Path, step: int,
          rate: float, duration_s: float, customer_offset: int, ack_target_ms: float,
          drain_s: float) -> dict[str, Any]:
    workload = {"run": spec["run"], "step": step, "rate": rate, "duration_s": duration_s,
                "followups": spec["followups"], "followup_gap_s": spec["followup_gap_s"],
                "customers": spec["customers"], "customer_offset": customer_offset, "waba_id": "skeleton",
                "app_secret": spec["app_secret"], "numbers": [[n, n] for n in spec["numbers"]]}
    load_spec = {"mode": "open", "host": "127.0.0.1", "port": server_port, "path": "/webhooks/1",
                 "workload": workload}
    spec_path, out_path = workdir / f"skeleton-{step}.json", workdir / f"skeleton-{step}-out.json"
    spec_path.write_text(json.dumps(load_spec))
    window = sampler.open_window()
    window_began = time.time()
    generator = subprocess.Popen([PY, "-m", "bench.loadgen", str(spec_path), str(out_path)])
    sampler.add_role(generator.pid, "load_generator")
    generator.wait()
    cpu = sampler.close_window(window)
    window_s = time.time() - window_began
    load = json.loads(out_path.read_text())
    messages = load["messages"]
    acked = {m["wamid"] for m in messages if m["status"] == 200}
    began = time.time()
    while True:
        arrivals: dict[str, list[float]] = httpx.get(f"http://127.0.0.1:{server_port}/_skeleton/arrivals",
                                                     timeout=60).json()
        if all(w in arrivals for w in acked) or time.time() - began > drain_s:
            break
        time.sleep(0.2)
    settle_s = time.time() - began
    ack = [m["answered"] - m["scheduled"] for m in messages if m["status"] == 200]
    delivered = [arrivals[m["wamid"]][0] - m["scheduled"] for m in messages if m["wamid"] in arrivals]
    lost = len([w for w in acked if w not in arrivals])
    duplicated = sum(len(arrivals[w]) - 1 for w in acked if w in arrivals)
    span = max(m["scheduled"] for m in messages) - min(m["scheduled"] for m in messages)
    finished = max((m["answered"] for m in messages), default=load["start"]) - load["start"]
    ack_summary = summary_ms(ack)
    # Percent of a core over the window → ms of CPU per message (the idle processes' floor included).
    per_message = {kind: round(10 * cpu.get(kind, 0.0) * window_s / len(messages), 2) for kind in DESIGN_KINDS}
    per_message["design_total"] = round(sum(per_message.values()), 2)
    result: dict[str, Any] = {
        "rate": rate, "posted": len(messages), "acknowledged": len(acked),
        "offered_msg_s": round(len(messages) / span, 1) if span > 0 else float(len(messages)),
        "achieved_msg_s": round(len(acked) / finished, 1) if finished > 0 else 0.0,
        "ack_ms": ack_summary, "webhook_to_stream_ms": summary_ms(delivered),
        "lost": lost, "duplicated": duplicated, "settle_s": round(settle_s, 1),
        "conversations": len({m["conversation"] for m in messages}),
        "generator": {"lateness_ms": load["lateness_ms"], "cpu_percent": load["cpu_percent"]},
        "cpu_percent": cpu, "cpu_ms_per_message": per_message,
    }
    p99 = ack_summary["p99"]
    result["passed"] = bool(len(acked) == len(messages) and lost == 0 and duplicated == 0
                            and p99 is not None and p99 <= ack_target_ms)
    return result


def design_ceiling(workdir: Path, rates: list[float], duration_s: float, shape: WorkloadShape,
                   ack_target_ms: float, log: Callable[[str], None], drain_s: float = 20.0) -> dict[str, Any]:
    """Step the skeleton through `rates` (stopping at the first that fails) on its own Ray instance."""
    port = free_port()
    spec = {"port": port, "dashboard_port": free_port(), "inboxes": shape.inboxes, "agents": shape.agents,
            "inboxes_per_agent": shape.inboxes_per_agent, "app_secret": secrets.token_hex(16),
            "numbers": [f"10{i:013d}" for i in range(shape.inboxes)], "run": secrets.token_hex(3),
            "followups": shape.followups, "followup_gap_s": shape.followup_gap_s, "customers": shape.customers}
    spec_path = workdir / "skeleton-spec.json"
    spec_path.write_text(json.dumps(spec))
    with (workdir / "skeleton-server.log").open("wb") as server_log:
        server = subprocess.Popen([PY, "-m", "bench.skeleton_server", str(spec_path)], stdout=server_log,
                                  stderr=subprocess.STDOUT)
    steps: list[dict[str, Any]] = []
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", server, "the design skeleton", 300)
        sampler = ProcessSampler({server.pid: "gateway"})
        for kind, pids in httpx.get(f"http://127.0.0.1:{port}/_skeleton/pids", timeout=60).json().items():
            for pid in pids:
                sampler.add_role(pid, kind)
        sampler.start()
        try:
            customer_offset = 0
            for index, rate in enumerate(rates):
                step = _step(port, spec, sampler, workdir, index, rate, duration_s, customer_offset,
                             ack_target_ms, drain_s)
                customer_offset += step["conversations"]  # the next step's customers follow on, as the product's
                steps.append(step)
                log(f"  skeleton {rate:g}/s: ack p50/p99 {step['ack_ms']['p50']}/{step['ack_ms']['p99']} ms, "
                    f"stream p99 {step['webhook_to_stream_ms']['p99']} ms, lost {step['lost']}, "
                    f"{step['cpu_ms_per_message']['design_total']} ms CPU/msg: "
                    f"{'pass' if step['passed'] else 'FAIL'}")
                if not step["passed"]:
                    break
        finally:
            sampler.stop()
    finally:
        stop_process(server, 60)
    passing = [s["rate"] for s in steps if s["passed"]]
    return {"max_sustainable_rate": max(passing) if passing else 0.0, "steps": steps,
            "left_out": "the store, routing decisions, a conversation's steps (offer, accept, close), "
                        "the WebSocket frames to agents"}


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.skeleton`: the design ceiling alone, e.g. with fewer agent processes."""
    parser = argparse.ArgumentParser(prog="python -m bench.skeleton", description=main.__doc__)
    parser.add_argument("--rates", default=DEFAULT_DESIGN_RATES)
    parser.add_argument("--duration", type=float, default=DESIGN_STEP_S)
    parser.add_argument("--inboxes", type=int, default=10)
    parser.add_argument("--agents", type=int, default=50, help="agent actors (one process each)")
    parser.add_argument("--ack-target-ms", type=float, default=250.0)
    parser.add_argument("--output", help="JSON result (printed when not given)")
    args = parser.parse_args(argv)
    result = design_ceiling(Path(tempfile.mkdtemp(prefix="wa-router-skeleton-")),
                            [float(r) for r in args.rates.split(",") if r.strip()], args.duration,
                            WorkloadShape(inboxes=args.inboxes, agents=args.agents), args.ack_target_ms,
                            lambda text: print(text, file=sys.stderr, flush=True))
    text = json.dumps({"inboxes": args.inboxes, "agents": args.agents, **result}, indent=2)
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
