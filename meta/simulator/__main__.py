"""`python -m meta.simulator --port 9000 --seed demo`: run the simulator standalone.

With `--seed demo` a demo WABA (three numbers, an approved `hello_world` template) is created
and its access token, app secret and ids are printed so wa-router can be configured against
`http://<host>:<port>/<api-version>`. Its new templates are reviewed automatically, as Meta would:
approved after `--review-delay` seconds (5 by default; `--no-review` leaves them PENDING until
`POST /_sim/templates/{id}/review` decides).
"""

from __future__ import annotations

import argparse
import json

import uvicorn

from meta.simulator.app import create_simulator_app
from meta.simulator.state import DeliveryPlan, ReviewPlan, SimulatorState, seed_demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m meta.simulator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--api-version", default="v25.0")
    parser.add_argument("--seed", choices=["demo", "none"], default="none")
    parser.add_argument("--access-token", help="token for the demo WABA (random when omitted)")
    parser.add_argument("--app-secret", help="app secret for the demo WABA (random when omitted)")
    parser.add_argument("--callback-url", help="wa-router webhook URL the simulator posts to")
    parser.add_argument("--mps", type=float, default=80.0, help="default per-number messages/second")
    parser.add_argument("--pair-interval", type=float, default=6.0,
                        help="seconds between two messages to the same customer (error 131056)")
    parser.add_argument("--no-statuses", action="store_true",
                        help="do not send sent/delivered/read webhooks for accepted messages")
    parser.add_argument("--review-delay", type=float, default=5.0,
                        help="approve every new template of the demo WABA after this many seconds (default 5)")
    parser.add_argument("--no-review", action="store_true",
                        help="no automatic template review: templates stay PENDING until /_sim decides")
    args = parser.parse_args(argv)

    state = SimulatorState(default_mps=args.mps, pair_interval_s=args.pair_interval)
    state.default_delivery = DeliveryPlan(enabled=not args.no_statuses)
    if args.seed == "demo":
        seeded = seed_demo(state, args.access_token, args.app_secret, args.callback_url)
        base = f"http://{args.host}:{args.port}/{args.api_version}"
        # Printed on purpose: this is a local test double and the operator needs these to connect.
        print(f"Meta simulator Graph URL: {base}")
        print(f"Demo WABA id:     {seeded['waba_id']}")
        print(f"Demo access token: {seeded['access_token']}")
        print(f"Demo app secret:   {seeded['app_secret']}")
        print("Demo numbers:", json.dumps(seeded["numbers"]))
        if not args.no_review:
            state.set_review_plan(seeded["waba_id"], ReviewPlan(enabled=True, delay_s=args.review_delay))
    uvicorn.run(create_simulator_app(state, args.api_version), host=args.host, port=args.port,
                log_level="warning")


if __name__ == "__main__":
    main()
