"""The readable report (rich): one row per step, the ceilings with ratios, resources and idle costs."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _ms(summary: dict[str, Any] | None, key: str) -> str:
    value = (summary or {}).get(key)
    return "-" if value is None else f"{value:g}"


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    # Wide enough for the step table when the output is a file or a pipe (make's log).
    console = console or Console(width=None if Console().is_terminal else 200)
    steps = Table(title=f"wa-router bench — store {report.get('store')}, {report['machine']['cpus']} CPUs")
    for column in ("rate", "offered/s", "achieved/s", "ack p50/p99/max ms", "→offer p50/p99 ms", "→message p50/p99 ms",
                   "timer late p50/p99 ms", "lost/dup/double", "not pushed", "gen late p99 ms / CPU%", "result"):
        steps.add_column(column, justify="right")
    for s in report["steps"]:
        steps.add_row(
            f"{s['rate']:g}", f"{s['offered_msg_s']:g}", f"{s['achieved_msg_s']:g}",
            f"{_ms(s['ack_ms'], 'p50')}/{_ms(s['ack_ms'], 'p99')}/{_ms(s['ack_ms'], 'max')}",
            f"{_ms(s['webhook_to_offer_ms'], 'p50')}/{_ms(s['webhook_to_offer_ms'], 'p99')}",
            f"{_ms(s['followup_to_message_ms'], 'p50')}/{_ms(s['followup_to_message_ms'], 'p99')}",
            f"{_ms(s['timer_lateness_ms'], 'p50')}/{_ms(s['timer_lateness_ms'], 'p99')}",
            f"{s['lost']}/{s['duplicated']}/{s['double_assigned']}", str(s["followups_not_pushed"]),
            f"{_ms(s['generator']['lateness_ms'], 'p99')} / {s['generator']['cpu_percent']:g}",
            "[green]pass[/]" if s["passed"] else "[red]fail[/]" + ("" if s["settled"] else " (unsettled)"))
    console.print(steps)

    held = [(s["rate"], s.get("postgres_connections")) for s in report["steps"] if s.get("postgres_connections")]
    if held:
        connections = Table(title="PostgreSQL connections held during each step (peaks, pg_stat_activity)")
        for column in ("rate", "all", "agents' own", "agent store actors'"):
            connections.add_column(column, justify="right")
        for rate, peaks in held:
            connections.add_row(f"{rate:g}", str(peaks["peak_all"]), str(peaks["peak_agents"]),
                                str(peaks["peak_agent_store_actors"]))
        console.print(connections)

    ceilings = Table(title="ceilings (same run, same machine)")
    for column in ("what", "figure", "product / ceiling"):
        ceilings.add_column(column)
    ceilings.add_row("max sustainable rate (nothing lost, p99 ack ≤ target)",
                     f"{report['max_sustainable_rate']:g} msg/s", "")
    http = report.get("http_ceiling")
    if http:
        ceilings.add_row("HTTP ceiling: minimal FastAPI/uvicorn, body read only",
                         f"{http['requests_per_s']:g} req/s (server CPU {http['server_cpu_percent']:g}%, "
                         f"generator CPU {http['cpu_percent']:g}%)", f"{report['http_ceiling_ratio']}")
    actor = report.get("actor_ceiling")
    if actor:
        ceilings.add_row("actor ceiling: raw Ray async actor calls",
                         f"{actor['calls_per_s']:g} calls/s (one call {actor['sequential_call_ms']['p50']} ms)",
                         f"{report['actor_ceiling_ratio']}")
    design = report.get("design_ceiling")
    if design:
        passed = [s for s in design["steps"] if s["passed"]]
        best = passed[-1] if passed else None
        detail = (f"; at it ack p99 {_ms(best['ack_ms'], 'p99')} ms, webhook → stream p50/p99 "
                  f"{_ms(best['webhook_to_stream_ms'], 'p50')}/{_ms(best['webhook_to_stream_ms'], 'p99')} ms, "
                  f"{best['cpu_ms_per_message']['design_total']:g} ms CPU/msg" if best else "")
        ceilings.add_row("design ceiling: this design's bare skeleton (HTTP, inbox and agent actors, streams; "
                         "no store, no logic)", f"{design['max_sustainable_rate']:g} msg/s{detail}",
                         f"{report.get('design_ceiling_ratio')}")
    console.print(ceilings)

    cluster = report.get("cluster")
    if cluster:
        nodes = Table(title=f"Ray cluster: {len(cluster['nodes'])} nodes on this machine, live actors per node")
        nodes.add_column("actor class")
        for node in cluster["nodes"]:
            nodes.add_column(node["node_id"] + (" (head)" if node["head"] else ""), justify="right")
        for class_name, per_node in sorted(cluster.get("placement", {}).items()):
            nodes.add_row(class_name, *(str(per_node.get(node["node_id"], 0)) for node in cluster["nodes"]))
        console.print(nodes)

    resources = Table(title=f"resources at step {report.get('figures_from_step')}")
    resources.add_column("process kind")
    resources.add_column("CPU % of a core", justify="right")
    resources.add_column("peak USS MiB", justify="right")
    cpu = report.get("cpu_percent") or {}
    memory = report.get("peak_memory_mib") or {}
    for kind in sorted(set(cpu) | set(memory)):
        resources.add_row(kind, str(cpu.get(kind, "-")), str(memory.get(kind, "-")))
    console.print(resources)
    console.print(
        f"idle agent actor: {report.get('idle_agent_actor_uss_mib')} MiB USS vs empty Ray actor "
        f"{report.get('empty_actor_uss_mib')} MiB (x{report.get('idle_agent_vs_empty_actor_memory')}), vs one of "
        f"an agent's shape {report.get('empty_routing_actor_uss_mib')} MiB "
        f"(x{report.get('idle_agent_vs_empty_routing_actor_memory')}), vs one of an agent's shape that served "
        f"calls {report.get('served_routing_actor_uss_mib')} MiB "
        f"(x{report.get('idle_agent_vs_served_routing_actor_memory')}); "
        f"idle CPU {report.get('idle_cpu_percent_per_agent_actor')}% of a core per agent actor")
    console.print(f"JSON: {report.get('output')}")
