"""The flags of `wa-router bench` (kept free of heavy imports: the CLI builds its parser from them)."""

from __future__ import annotations

import argparse

DEFAULT_RATES = "20,40,80,160,320,640,1280,2560"
DEFAULT_DESIGN_RATES = "100,200,400,800,1600,3200"


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    load = parser.add_argument_group("load")
    load.add_argument("--rate", type=float, help="one offered rate (messages/s) instead of stepping")
    load.add_argument("--rates", default=DEFAULT_RATES,
                      help="rates to step through, stopping at the first that fails (default %(default)s)")
    load.add_argument("--duration", type=float, default=20.0, help="seconds of load per step (default %(default)s)")
    load.add_argument("--ack-target-ms", type=float, default=250.0,
                      help="p99 acknowledgement a sustainable rate must keep (default %(default)s)")
    load.add_argument("--drain-timeout", type=float, default=60.0,
                      help="seconds a step may take to settle after the load (default %(default)s)")
    shape = parser.add_argument_group("workload (the standard one by default)")
    shape.add_argument("--inboxes", type=int, default=10, help="inboxes, across the four automatic modes")
    shape.add_argument("--agents", type=int, default=50)
    shape.add_argument("--inboxes-per-agent", type=int, default=2)
    shape.add_argument("--max-concurrent", type=int, default=5, help="each agent's capacity")
    shape.add_argument("--customers", type=int, default=2000)
    shape.add_argument("--followups", type=int, default=4, help="messages after the opening one")
    shape.add_argument("--followup-gap", type=float, default=1.0, help="seconds between a conversation's messages")
    shape.add_argument("--accept-delay", type=float, default=0.05, help="seconds before an agent accepts")
    shape.add_argument("--linger", type=float, default=5.0,
                       help="an agent closes a chat after this long without its last message")
    shape.add_argument("--no-timer-inbox", dest="timer_inbox", action="store_false",
                       help="leave out the inbox with 1-second reassignment and the agent who never answers")
    stack = parser.add_argument_group("stack and output")
    stack.add_argument("--database-url",
                       help="store: SQLite in a temporary directory by default; a PostgreSQL URL names the "
                            "server, on which a fresh database is created and dropped")
    stack.add_argument("--cluster-workers", type=int, default=0, metavar="N",
                       help="run the gateway on a Ray cluster of this machine: a head and N worker nodes "
                            "(ray.cluster_utils.Cluster); the report says on which node each actor ran")
    stack.add_argument("--no-ceilings", dest="ceilings", action="store_false",
                       help="skip the HTTP, actor and design ceilings")
    stack.add_argument("--design-rates", default=DEFAULT_DESIGN_RATES,
                       help="rates for the design ceiling, the design's bare skeleton (bench/skeleton.py), "
                            "10 s each; run with the other ceilings (default %(default)s)")
    stack.add_argument("--idle-seconds", type=float, default=10.0,
                       help="how long idle agent actors are watched for CPU (default %(default)s)")
    stack.add_argument("--task-events", action="store_true",
                       help="turn on Ray's task events for the routing actors (WA_ROUTER_RAY_TASK_EVENTS, off "
                            "by default as in production) and count actor calls per message from them")
    stack.add_argument("--profile", action="store_true",
                       help="after stepping, profile the gateway and the busiest inbox actor with py-spy")
    stack.add_argument("--output", default="bench/results/latest.json", help="JSON result (default %(default)s)")
    stack.add_argument("--smoke", action="store_true",
                       help="a ~10-second run on a small workload (the test-suite's check)")


def apply_smoke(args: argparse.Namespace) -> None:
    """The smoke preset: small, short, one step, no ceilings; only correctness matters."""
    args.rate, args.duration, args.inboxes, args.agents, args.customers = 10.0, 8.0, 4, 8, 200
    args.followup_gap, args.ceilings, args.idle_seconds, args.profile = 0.5, False, 2.0, False
