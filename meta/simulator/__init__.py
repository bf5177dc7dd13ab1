"""A faithful in-process simulator of Meta's WhatsApp Cloud API (Graph API + webhooks).

Serve `create_simulator_app(SimulatorState())` over real HTTP (e.g. with
`gateway.background_server.BackgroundServer`), point wa-router's `graph_url` at
`<server>/v25.0`, and drive customers with `payloads` + `WebhookSender` or the `/_sim/`
control API. `python -m meta.simulator --port 9000 --seed demo` runs it standalone.
"""

from meta.simulator import payloads
from meta.simulator.app import create_simulator_app
from meta.simulator.state import (
    SERVICE_WINDOW_S,
    PhoneNumber,
    SentMessage,
    SimulatorError,
    SimulatorState,
    Template,
    Waba,
    seed_demo,
)
from meta.simulator.webhook_sender import WebhookSender, averify_subscription, verify_subscription

__all__ = [
    "SERVICE_WINDOW_S",
    "PhoneNumber",
    "SentMessage",
    "SimulatorError",
    "SimulatorState",
    "Template",
    "Waba",
    "WebhookSender",
    "averify_subscription",
    "create_simulator_app",
    "payloads",
    "seed_demo",
    "verify_subscription",
]
