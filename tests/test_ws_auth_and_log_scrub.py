"""The agent event stream's authentication (subprotocol or header, never the URL) and token-free logs."""

from __future__ import annotations

import io
import logging

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from gateway.log_scrub import TokenScrubFilter, install_token_scrubbing, scrub
from tests.routing_support import AgentSocket, Scenario


def _url(sc: Scenario, user_id: int, query: str = "") -> str:
    return sc.gateway.url.replace("http", "ws", 1) + sc.org.path(f"/agents/{user_id}/events") + query


def test_subprotocol_token_is_accepted_and_our_subprotocol_selected(sc: Scenario) -> None:
    (a,) = sc.agents(1)
    with connect(_url(sc, a.id), subprotocols=["wa-router.events", f"bearer.{a.token}"],  # type: ignore[list-item]
                 open_timeout=15) as ws:
        assert ws.subprotocol == "wa-router.events"  # never the token echoed back
        assert '"hello"' in str(ws.recv(timeout=15))


def test_token_in_the_url_is_refused(sc: Scenario) -> None:
    (a,) = sc.agents(1)
    with pytest.raises(InvalidStatus) as refused:
        connect(_url(sc, a.id, f"?access_token={a.token}"), open_timeout=15)
    assert refused.value.response.status_code == 403


def test_bearer_subprotocol_without_ours_is_refused(sc: Scenario) -> None:
    (a,) = sc.agents(1)
    with pytest.raises(InvalidStatus) as refused:
        connect(_url(sc, a.id), subprotocols=[f"bearer.{a.token}"], open_timeout=15)  # type: ignore[list-item]
    assert refused.value.response.status_code == 403


def test_wrong_subprotocol_token_is_refused(sc: Scenario) -> None:
    (a, b) = sc.agents(2)
    with pytest.raises(InvalidStatus) as refused:
        AgentSocket(sc.gateway, sc.org, a.id, b.token, subprotocol_token=True)
    assert refused.value.response.status_code == 403


def test_scrub_masks_every_token_form() -> None:
    line = ('GET /x?cursor=3&access_token=war_abc-DEF_123&y=1 Authorization: Bearer admin-0123abcd '
            'Sec-WebSocket-Protocol: wa-router.events, bearer.war_zzz')
    scrubbed = scrub(line)
    for secret in ("abc-DEF_123", "admin-0123abcd", "war_zzz", "zzz"):
        assert secret not in scrubbed
    assert "cursor=3" in scrubbed and "y=1" in scrubbed and "wa-router.events" in scrubbed


def test_uvicorn_access_log_line_is_scrubbed() -> None:
    from uvicorn.logging import AccessFormatter

    install_token_scrubbing()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False))
    access = logging.getLogger("uvicorn.access.scrub-test")
    access.addHandler(handler)
    access.propagate = False
    access.setLevel(logging.INFO)
    try:
        # The call uvicorn's access log makes for every request.
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET",
                    "/v1/orgs/1/agents/2/events?access_token=war_secretvalue", "1.1", 403)
        logging.getLogger("wa_router.scrub-test").addHandler(handler)
        logging.getLogger("wa_router.scrub-test").warning("header was Bearer %s", "war_othersecret")
    finally:
        access.removeHandler(handler)
        logging.getLogger("wa_router.scrub-test").removeHandler(handler)
    output = stream.getvalue()
    assert "secretvalue" not in output and "othersecret" not in output
    assert "/v1/orgs/1/agents/2/events?access_token=***" in output and " 403" in output


def test_filter_form_scrubs_a_record() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "token %s", ("war_abcdef",), None)
    assert TokenScrubFilter().filter(record)
    assert "abcdef" not in record.getMessage()
    split = logging.LogRecord("x", logging.INFO, __file__, 1, "Authorization: Bearer %s", ("admin-0123",), None)
    assert TokenScrubFilter().filter(split)
    assert split.getMessage() == "Authorization: Bearer ***"


def test_open_stream_is_dropped_when_its_watcher_is_demoted_or_deleted(sc: Scenario) -> None:
    (a,) = sc.agents(1)
    supervisor_id, supervisor_token = sc.org.add_user(role="admin")
    with AgentSocket(sc.gateway, sc.org, a.id, supervisor_token) as watched, \
            AgentSocket(sc.gateway, sc.org, a.id, a.token, subprotocol_token=True) as own:
        sc.gateway.ok("PATCH", sc.org.path(f"/users/{supervisor_id}"), sc.org.owner_token, json={"role": "member"})
        # Within a few re-checks (every 2 s): a member may not watch another agent.
        assert watched.wait_closed(timeout=10), "a demoted supervisor still watches another agent"
        assert watched.close_code == 1008
        assert not own.wait_closed(timeout=0)  # the agent's own stream is unaffected
    other_id, other_token = sc.org.add_user(role="admin")
    with AgentSocket(sc.gateway, sc.org, a.id, other_token) as watched:
        sc.gateway.ok("DELETE", sc.org.path(f"/users/{other_id}"), sc.org.owner_token, 204)
        assert watched.wait_closed(timeout=10), "a deleted supervisor still watches another agent"
        assert watched.close_code == 1008
    with pytest.raises(InvalidStatus) as refused:  # and on reconnecting
        AgentSocket(sc.gateway, sc.org, a.id, other_token)
    assert refused.value.response.status_code == 403
