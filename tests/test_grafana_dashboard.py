"""The Grafana dashboard charts metrics that exist: every name in its queries is one the gateway serves at
`/metrics` or one the routing and sender actors record through Ray (with Ray's `ray_` prefix)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import actors.inbox_metrics
import actors.sender_metrics
from gateway.metrics import GatewayMetrics

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "wa-router.json"
SUFFIXES = ("", "_total", "_bucket", "_count", "_sum")


def known_metrics() -> set[str]:
    names: set[str] = set()
    for family in GatewayMetrics().registry.collect():
        names |= {family.name + suffix for suffix in SUFFIXES}
    for module in (actors.inbox_metrics, actors.sender_metrics):
        for name in re.findall(r'metrics\.\w+\(\s*"(\w+)"', Path(str(module.__file__)).read_text()):
            names |= {f"ray_{name}{suffix}" for suffix in SUFFIXES}
    return names


def test_every_query_names_a_served_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    known = known_metrics()
    assert "wa_router_inbox_contacts_in_queue" in known and "ray_wa_router_inbox_offers_total" in known
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert len(queries) >= 15
    for query in queries:
        used = {word for word in re.findall(r"\b(?:ray_)?wa_router_\w+", query)}
        assert used, query
        assert used <= known, (query, used - known)


def test_panels_use_the_datasource_variable_and_inbox_filters() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "organization", "inbox"} <= variables
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            if "inbox" in target["expr"] and "wa_router_inbox" in target["expr"]:
                assert 'inbox=~"$inbox"' in target["expr"], target["expr"]
