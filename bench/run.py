"""The orchestrator of `wa-router bench`: ceilings, then the stack under stepped open-loop load.

Every figure comes from a real process: acknowledgements and lateness from the generator, offer and
message arrival times from the agents' WebSockets, losses and timers from the store, CPU and memory
from psutil over the gateway's process tree (Ray's daemons and actors included).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

from bench.counters import PostgresConnections, actor_calls, actor_placement, per_message, store_commits
from bench.options import apply_smoke
from bench.procstats import ProcessSampler, local_postgres_server
from bench.profiles import record, summarise
from bench.skeleton import DESIGN_STEP_S, design_ceiling
from bench.stack import Stack, stop_process, wait_http
from bench.stats import summary_ms
from bench.verify import count_problems, wait_until_settled
from bench.workload import Plan, WorkloadShape, build_schedule, set_up
from gateway.background_server import free_port

PY = sys.executable
# Seconds without traffic before the first step: each process kind's idle floor, left out of CPU per message.
IDLE_FLOOR_S = 5.0


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _read_line(stream: IO[bytes], timeout_s: float, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + timeout_s
    os.set_blocking(stream.fileno(), False)
    buffer = b""
    while time.monotonic() < deadline:
        chunk = stream.readline()
        if chunk:
            buffer += chunk
            if buffer.endswith(b"\n"):
                return buffer.decode().strip()
        elif process.poll() is not None:
            raise RuntimeError(f"process {process.args!r} exited with {process.returncode}")
        else:
            time.sleep(0.05)
    raise TimeoutError(f"no answer from {process.args!r} within {timeout_s}s")


# ---------------------------------------------------------------------- ceilings


def http_ceiling(workdir: Path, duration_s: float = 6.0, concurrency: int = 32) -> dict[str, Any]:
    """A minimal FastAPI/uvicorn endpoint that only reads the body, saturated by the generator."""
    port = free_port()
    server = subprocess.Popen([PY, "-m", "bench.ceiling_http", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", server, "the HTTP ceiling server", 60)
        body = json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": []}],
                           "padding": "x" * 900})
        spec = {"mode": "closed", "host": "127.0.0.1", "port": port, "path": "/webhook", "body": body,
                "duration_s": duration_s, "concurrency": concurrency}
        spec_path, out_path = workdir / "ceiling-http.json", workdir / "ceiling-http-out.json"
        spec_path.write_text(json.dumps(spec))
        server_process = psutil.Process(server.pid)
        cpu_before = sum(server_process.cpu_times()[:2])
        subprocess.run([PY, "-m", "bench.loadgen", str(spec_path), str(out_path)], check=True, timeout=120)
        result: dict[str, Any] = json.loads(out_path.read_text())
        result["server_cpu_percent"] = round(100 * (sum(server_process.cpu_times()[:2]) - cpu_before)
                                             / result["wall_s"], 1)
        result.pop("p50_ms", None)
        return result
    finally:
        stop_process(server, 10)


def actor_ceiling(duration_s: float = 8.0, attempts: int = 2) -> dict[str, Any]:
    """Raw Ray actor calls in a Ray instance of their own; a second attempt if Ray fails to start."""
    error = ""
    for _attempt in range(attempts):
        done = subprocess.run([PY, "-m", "bench.ceiling_actor", str(duration_s)], capture_output=True, timeout=300)
        lines = done.stdout.decode().strip().splitlines()
        if done.returncode == 0 and lines:
            result: dict[str, Any] = json.loads(lines[-1])
            return result
        error = done.stderr.decode()[-2000:]
        log(f"actor ceiling failed ({done.returncode}): {error[-300:]}")
    raise RuntimeError(f"the actor ceiling could not be measured: {error}")


# ---------------------------------------------------------------------- one step


def cpu_ms_per_message(cpu_percent: dict[str, float], floor_percent: dict[str, float], window_s: float,
                       messages: int) -> dict[str, float] | None:
    """CPU per acknowledged message by process kind, each kind's idle floor (measured before the steps) left out."""
    if not messages:
        return None
    return {kind: round(max(0.0, percent - floor_percent.get(kind, 0.0)) / 100 * window_s * 1000 / messages, 2)
            for kind, percent in cpu_percent.items()}


def idle_floor(sampler: ProcessSampler, seconds: float) -> dict[str, float]:
    """Percent of a core each process kind uses with the stack up and no traffic (Ray's own floor)."""
    window = sampler.open_window()
    time.sleep(seconds)
    return sampler.close_window(window)


def run_step(args: argparse.Namespace, stack: Stack, plan: Plan, agents: subprocess.Popen[bytes],
             sampler: ProcessSampler, workdir: Path, run_tag: str, step: int, rate: float,
             customer_offset: int, floor: dict[str, float], profile_to: Path | None = None) -> dict[str, Any]:
    workload = {"run": run_tag, "step": step, "rate": rate, "duration_s": args.duration,
                "followups": args.followups, "followup_gap_s": args.followup_gap, "customers": args.customers,
                "customer_offset": customer_offset, "waba_id": plan.waba_id, "app_secret": plan.app_secret,
                "numbers": plan.numbers}
    spec = {"mode": "open", "host": "127.0.0.1", "port": stack.gateway_port,
            "path": f"/webhooks/whatsapp/{plan.org_id}", "workload": workload}
    spec_path, out_path = workdir / f"step-{step}.json", workdir / f"step-{step}-out.json"
    spec_path.write_text(json.dumps(spec))
    schedule = build_schedule(workload)
    dashboard = f"http://127.0.0.1:{stack.dashboard_port}"
    local_instance = not stack.ray_address  # the gateway's own instance, with token authentication
    # Ray's task summary counts the calls only where task events are on (`--task-events`).
    calls_before = actor_calls(dashboard, local_instance) if args.task_events else {}
    commits_before = store_commits(stack.database_url)
    sampler.reset_peaks()
    window = sampler.open_window()
    connections = PostgresConnections.start_for(stack.database_url)
    generator = subprocess.Popen([PY, "-m", "bench.loadgen", str(spec_path), str(out_path)])
    sampler.add_role(generator.pid, "load_generator")
    profilers: dict[str, tuple[subprocess.Popen[bytes] | None, Path]] = {}
    if profile_to is not None:
        time.sleep(min(5.0, args.duration / 4))  # let the load reach its steady state
        busiest = max(sampler.per_process("inbox_actor").items(), key=lambda item: item[1][0], default=None)
        targets = {"gateway": stack.gateway.pid if stack.gateway else None,
                   "inbox_actor": busiest[0] if busiest else None}
        for name, pid in targets.items():
            if pid is not None:
                path = profile_to.parent / f"{profile_to.stem}-profile-{name}.txt"
                profilers[name] = (record(pid, max(5.0, args.duration - 8.0), path), path)
    generator.wait()
    cpu = sampler.close_window(window)
    window_s = time.time() - window.started
    load = json.loads(out_path.read_text())
    memory = sampler.peak_memory_mib()
    messages = load["messages"]
    acked = {m["wamid"] for m in messages if m["status"] == 200}
    failures = [m for m in messages if m["status"] != 200]
    log(f"step {step} ({rate:g}/s): {len(messages)} posted, {len(failures)} not acknowledged; settling")
    view, waited, polls = wait_until_settled(stack.database_url, plan.org_id, f"wamid.bench.{run_tag}.{step}.",
                                             plan.timer_inbox_id, acked, args.drain_timeout)
    settled = waited <= args.drain_timeout
    connections_held = connections.stop() if connections is not None else None
    commits_after = store_commits(stack.database_url)
    if connections_held is not None:
        polls += connections_held["samples"]  # each sample is a transaction of the harness's own
    calls_after = actor_calls(dashboard, local_instance) if args.task_events else {}
    time.sleep(0.5)  # the last WebSocket frames
    dump = workdir / f"agents-{step}.json"
    assert agents.stdin is not None and agents.stdout is not None
    agents.stdin.write(f"dump {dump}\n".encode())
    agents.stdin.flush()
    _read_line(agents.stdout, 60, agents)
    recorded = json.loads(dump.read_text())
    prefix = f"wamid.bench.{run_tag}.{step}."
    events = [e for e in recorded["events"] if e.get("wamid") is None or str(e["wamid"]).startswith(prefix)]

    scheduled = {m["wamid"]: m["scheduled"] for m in messages}
    first_offer: dict[str, float] = {}
    first_push: dict[str, float] = {}
    for event in events:
        wamid = event.get("wamid")
        if wamid is None:
            continue
        if event["type"] == "offer" and wamid not in first_offer:
            first_offer[wamid] = event["at"]
        elif event["type"] == "message" and wamid not in first_push:
            first_push[wamid] = event["at"]
    openings = [m["wamid"] for m in messages if m["k"] == 1 and m["wamid"] in acked]
    followups = [m["wamid"] for m in messages if m["k"] > 1 and m["wamid"] in acked]
    offer_latency = [first_offer[w] - scheduled[w] for w in openings if w in first_offer]
    push_latency = [first_push[w] - scheduled[w] for w in followups if w in first_push]
    conversation_of = {m["wamid"]: (step, m["conversation"]) for m in messages}
    problems = count_problems(view, acked, events, conversation_of)
    ack = [m["answered"] - m["scheduled"] for m in messages if m["status"] == 200]
    span = max(m["scheduled"] for m in messages) - min(m["scheduled"] for m in messages)
    finished = max((m["answered"] for m in messages), default=load["start"]) - load["start"]
    ack_summary = summary_ms(ack)
    result: dict[str, Any] = {
        "step": step, "rate": rate,
        "offered_msg_s": round(len(messages) / span, 1) if span > 0 else float(len(messages)),
        "achieved_msg_s": round(len(acked) / finished, 1) if finished > 0 else 0.0,
        "posted": len(messages), "acknowledged": len(acked), "ack_failures": len(failures),
        "ack_failure_examples": sorted({str(m["error"] or m["status"]) for m in failures})[:3],
        "ack_ms": ack_summary,
        "webhook_to_offer_ms": summary_ms(offer_latency),
        "followup_to_message_ms": summary_ms(push_latency),
        "followups_not_pushed": len(followups) - len(push_latency),
        "timer_lateness_ms": summary_ms(view.timer_lateness_s), "timer_misses": view.misses,
        "settled": settled, "settle_s": round(waited, 1),
        **problems,
        "generator": {"lateness_ms": load["lateness_ms"], "cpu_percent": load["cpu_percent"],
                      "connections_opened": load["connections_opened"]},
        "cpu_percent": cpu, "peak_memory_mib": memory,
        "cpu_ms_per_message": cpu_ms_per_message(cpu, floor, window_s, len(acked)),
        "agent_errors": recorded["errors"][:5], "agent_error_count": len(recorded["errors"]),
        "conversations": len({m["conversation"] for m in messages}),
        # Everything the conversations caused (accepts and closes included), divided by their messages.
        "actor_calls_per_message": per_message(calls_before, calls_after, len(acked)) if args.task_events else None,
        # PostgreSQL counts the harness's polls (reads) as transactions; SQLite's count is of writes only.
        "store_commits_per_message": round((commits_after - commits_before
                                            - (polls if stack.database_url.startswith("postgresql") else 0))
                                           / len(acked), 2)
        if commits_after is not None and commits_before is not None and acked else None,
        "postgres_connections": connections_held,
    }
    p99 = ack_summary["p99"]
    result["passed"] = bool(
        settled and not failures and problems["lost"] == 0 and problems["duplicated"] == 0
        and problems["double_assigned"] == 0 and p99 is not None and p99 <= args.ack_target_ms)
    for name, (profiler, path) in profilers.items():
        if profiler is not None:
            profiler.wait(timeout=120)
            if path.exists():
                result.setdefault("profiles", {})[name] = summarise(path)
    del schedule
    return result


# ---------------------------------------------------------------------- a cluster on this machine


@dataclass(frozen=True)
class LocalCluster:
    """A head and worker nodes on this machine (`bench/cluster.py`), for the gateway to join."""

    process: subprocess.Popen[bytes]  # its raylets, GCS and actors are this process's descendants
    address: str
    dashboard_port: int
    nodes: list[dict[str, Any]]


@contextlib.contextmanager
def local_cluster(workers: int, log_path: Path) -> Iterator[LocalCluster]:
    log(f"Ray cluster: a head and {workers} worker nodes")
    dashboard_port = free_port()
    with log_path.open("wb") as errors:
        helper = subprocess.Popen([PY, "-m", "bench.cluster", str(workers), str(dashboard_port)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors)
    assert helper.stdout is not None
    try:
        started = json.loads(_read_line(helper.stdout, 300, helper))
        yield LocalCluster(helper, started["address"], dashboard_port, started["nodes"])
    finally:
        tell_to_quit(helper, timeout_s=120)


def tell_to_quit(helper: subprocess.Popen[bytes], timeout_s: float) -> None:
    """A helper process that reads commands on its standard input: `quit`, then SIGKILL if it hangs."""
    if helper.stdin is not None:
        try:
            helper.stdin.write(b"quit\n")
            helper.stdin.flush()
        except BrokenPipeError:
            pass
    try:
        helper.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        helper.kill()
        helper.wait(timeout=10)


# ---------------------------------------------------------------------- idle agents


def idle_figures(sampler: ProcessSampler, seconds: float) -> dict[str, Any]:
    """Agent actors with their WebSockets open and no traffic: CPU per actor and unique memory."""
    time.sleep(3.0)
    sampler.sample()
    before = sampler.per_process("agent_actor")
    time.sleep(seconds)
    sampler.sample()
    after = sampler.per_process("agent_actor")
    common = [pid for pid in after if pid in before]
    if not common:
        return {"agent_actors": 0}
    cpu = [100 * (after[pid][0] - before[pid][0]) / seconds for pid in common]
    uss = sorted(after[pid][1] for pid in common)
    return {"agent_actors": len(common), "agent_actor_idle_cpu_percent": round(sum(cpu) / len(cpu), 3),
            "agent_actor_uss_mib": round(uss[len(uss) // 2], 1), "agent_actors_uss_total_mib": round(sum(uss), 1)}


# ---------------------------------------------------------------------- the whole run


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.smoke:
        apply_smoke(args)
    shape = WorkloadShape(inboxes=args.inboxes, agents=args.agents, inboxes_per_agent=args.inboxes_per_agent,
                          max_concurrent=args.max_concurrent, customers=args.customers, followups=args.followups,
                          followup_gap_s=args.followup_gap, accept_delay_s=args.accept_delay,
                          timer_inbox=args.timer_inbox)
    rates = [args.rate] if args.rate else [float(r) for r in args.rates.split(",") if r.strip()]
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="wa-router-bench-run-"))
    run_tag = secrets.token_hex(3)
    report: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": psutil.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
                    "python": platform.python_version(), "platform": platform.platform(),
                    # Other work on the machine skews every figure: say how busy it was.
                    "load_average_at_start": [round(x, 1) for x in os.getloadavg()]},
        "workload": {**shape.__dict__, "duration_s": args.duration, "rates": rates, "linger_s": args.linger,
                     "ack_target_ms": args.ack_target_ms},
        # Ray's task events for the routing actors (off by default, as in production: `--task-events`).
        "ray_task_events": args.task_events,
    }
    if args.ceilings:
        log("HTTP ceiling (minimal FastAPI/uvicorn endpoint)")
        report["http_ceiling"] = http_ceiling(workdir)
        log(f"  {report['http_ceiling']['requests_per_s']} requests/s; actor ceiling (raw Ray async calls)")
        report["actor_ceiling"] = actor_ceiling()
        log(f"  {report['actor_ceiling']['calls_per_s']} calls/s; design ceiling (the design's bare skeleton)")
        report["design_ceiling"] = design_ceiling(
            workdir, [float(r) for r in args.design_rates.split(",") if r.strip()], DESIGN_STEP_S, shape,
            args.ack_target_ms, log)
        log(f"  {report['design_ceiling']['max_sustainable_rate']:g} msg/s")
    steps: list[dict[str, Any]] = []
    with (local_cluster(args.cluster_workers, workdir / "cluster.log") if args.cluster_workers
          else contextlib.nullcontext()) as cluster:
        if cluster is not None:
            report["cluster"] = {"nodes": cluster.nodes}
        _run_steps(args, report, steps, rates, shape, output, workdir, run_tag, cluster)
    report["steps"] = steps
    report["machine"]["load_average_at_end"] = [round(x, 1) for x in os.getloadavg()]
    report.update(headline(report, steps))
    output.write_text(json.dumps(report, indent=2))
    report["output"] = str(output)
    return report


def _run_steps(args: argparse.Namespace, report: dict[str, Any], steps: list[dict[str, Any]], rates: list[float],
               shape: WorkloadShape, output: Path, workdir: Path, run_tag: str, cluster: LocalCluster | None) -> None:
    with Stack(args.database_url, log_dir=workdir, ray_address=cluster.address if cluster else None,
               dashboard_port=cluster.dashboard_port if cluster else None, task_events=args.task_events) as stack:
        report["store"] = "postgresql" if stack.database_url.startswith("postgresql") else "sqlite"
        log(f"stack up (gateway {stack.gateway_url}, store {report['store']}); setting up the workload")
        assert stack.gateway is not None and stack.simulator is not None
        plan = set_up(stack.gateway_url, stack.admin_token, stack.simulator_url, shape)
        plan_path = workdir / "plan.json"
        plan_path.write_text(json.dumps(plan.to_json()))
        agents = subprocess.Popen([PY, "-m", "bench.agents", str(plan_path), str(args.accept_delay),
                                   str(args.linger)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            assert agents.stdout is not None and agents.stdin is not None
            _read_line(agents.stdout, 300, agents)
            log(f"{len(plan.agents)} agents online on WebSockets")
            roles = {stack.gateway.pid: "gateway", stack.simulator.pid: "meta_simulator",
                     agents.pid: "simulated_agents"}
            if cluster is not None:
                roles[cluster.process.pid] = "ray_system"
            store_server = local_postgres_server(stack.database_url)
            if store_server is not None:
                roles[store_server] = "store_server"
            sampler = ProcessSampler(roles).start()
            log("idle floor of every process kind")
            floor = report["idle_floor_cpu_percent"] = idle_floor(sampler, IDLE_FLOOR_S)
            customer_offset = 0
            for index, rate in enumerate(rates):
                log(f"step {index}: {rate:g} messages/s for {args.duration:g}s")
                step = run_step(args, stack, plan, agents, sampler, workdir, run_tag, index, rate, customer_offset,
                                floor)
                customer_offset += step["conversations"]
                steps.append(step)
                log(f"  ack p50/p99 {step['ack_ms']['p50']}/{step['ack_ms']['p99']} ms, "
                    f"lost {step['lost']}, duplicated {step['duplicated']}, double-assigned "
                    f"{step['double_assigned']}: {'pass' if step['passed'] else 'FAIL'}")
                if not step["passed"]:
                    break
            if cluster is not None:
                dashboard = f"http://127.0.0.1:{cluster.dashboard_port}"
                report["cluster"]["placement"] = actor_placement(dashboard, token_auth=False)
                log(f"actors per node: {report['cluster']['placement']}")
            log("idle agents")
            report["idle"] = idle_figures(sampler, args.idle_seconds)
            if args.profile:
                passing = [s["rate"] for s in steps if s["passed"]]
                profile_rate = max(passing) if passing else rates[0]
                log(f"profiling the gateway and the busiest inbox actor at {profile_rate:g}/s")
                profiled = run_step(args, stack, plan, agents, sampler, workdir, run_tag, len(steps), profile_rate,
                                    customer_offset, floor, profile_to=output)
                report["profile"] = {"rate": profile_rate, **profiled.get("profiles", {})}
            sampler.stop()
        finally:
            tell_to_quit(agents, timeout_s=20)


def headline(report: dict[str, Any], steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The top-level keys: the highest passing step's figures (or the first step's when none passed)."""
    passing = [s for s in steps if s["passed"]]
    best = passing[-1] if passing else (steps[0] if steps else {})
    rate = best["rate"] if passing else 0.0
    http = report.get("http_ceiling", {}).get("requests_per_s")
    actor = report.get("actor_ceiling", {}).get("calls_per_s")
    design = report.get("design_ceiling", {}).get("max_sustainable_rate")
    idle = report.get("idle", {})
    empty = report.get("actor_ceiling", {}).get("empty_actor_uss_mib")
    shaped = report.get("actor_ceiling", {}).get("empty_routing_actor_uss_mib")
    served = report.get("actor_ceiling", {}).get("served_routing_actor_uss_mib")
    agent_uss = idle.get("agent_actor_uss_mib")
    keys = ("offered_msg_s", "achieved_msg_s", "ack_ms", "webhook_to_offer_ms", "followup_to_message_ms",
            "timer_lateness_ms", "lost", "duplicated", "double_assigned", "peak_memory_mib", "cpu_percent",
            "cpu_ms_per_message")
    return {
        "max_sustainable_rate": rate,
        "http_ceiling_ratio": round(rate / http, 4) if http else None,
        "actor_ceiling_ratio": round(rate / actor, 4) if actor else None,
        "design_ceiling_ratio": round(rate / design, 4) if design else None,
        "figures_from_step": best.get("step"),
        **{key: best.get(key) for key in keys},
        "lost_total": sum(s["lost"] for s in steps),
        "duplicated_total": sum(s["duplicated"] for s in steps),
        "double_assigned_total": sum(s["double_assigned"] for s in steps),
        "idle_agent_actor_uss_mib": agent_uss,
        "empty_actor_uss_mib": empty,
        "idle_agent_vs_empty_actor_memory": round(agent_uss / empty, 2) if empty and agent_uss else None,
        # The same empty actor in an agent actor's shape (async, its concurrency groups, a stream read).
        "empty_routing_actor_uss_mib": shaped,
        "idle_agent_vs_empty_routing_actor_memory": round(agent_uss / shaped, 2) if shaped and agent_uss else None,
        # That actor again after serving calls (`bench/ceiling_actor.py`): what Ray keeps of a worked process.
        "served_routing_actor_uss_mib": served,
        "served_routing_actor_vs_empty_actor_memory": round(served / empty, 2) if served and empty else None,
        "idle_agent_vs_served_routing_actor_memory": round(agent_uss / served, 2) if served and agent_uss else None,
        "idle_cpu_percent_per_agent_actor": idle.get("agent_actor_idle_cpu_percent"),
    }


def main(args: argparse.Namespace) -> int:
    from bench.report import print_report

    report = run(args)
    print_report(report)
    return 0


if __name__ == "__main__":
    from bench.options import add_bench_arguments

    parser = argparse.ArgumentParser(prog="python -m bench.run")
    add_bench_arguments(parser)
    sys.exit(main(parser.parse_args()))
