"""The web console in a real browser (Debian's headless chromium driven by Playwright).

A supervisor links the simulator's WABA (after Meta refuses a wrong token, with its reason shown) and
creates an inbox; a simulated customer writes; the agent's desk rings; the agent accepts, replies and
closes; the supervisor's live board shows each step. On the way the agent quotes the customer's message,
the desk's WebSocket is dropped and resumes from its cursor, the agent writes first to a new number with an
approved template (WhatsApp Back), and the supervisor transfers that conversation back to the queue from
the board. Screenshots of the main screens go to docs/.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import Gateway, add_simulated_waba, create_org

CHROMIUM = os.environ.get("WA_ROUTER_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
DOCS = Path(__file__).resolve().parents[1] / "docs"
TIMEOUT_MS = 30_000

if not Path(CHROMIUM).exists():
    pytest.skip(f"chromium not found at {CHROMIUM}: 'make test' installs it (apt-get install -y chromium)",
                allow_module_level=True)

from playwright.sync_api import Browser, Page, WebSocketRoute, expect, sync_playwright  # noqa: E402  (after the skip)

# Every expectation waits as long as the page's actions do: on a busy machine a step that starts an actor
# process (creating an inbox, an agent turning available) can take longer than Playwright's default 5 s.
expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def _page(browser: Browser, gateway: Gateway, token: str, screen: str = "",
          sockets: list[tuple[WebSocketRoute, WebSocketRoute]] | None = None) -> Page:
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    if sockets is not None:  # the page's WebSockets pass through the test, which can drop them
        page.route_web_socket(re.compile(r"/events"), lambda ws: sockets.append((ws, ws.connect_to_server())))
    page.goto(f"{gateway.url}/#token={token}")
    expect(page.locator("#who")).to_contain_text("·")  # signed in
    if screen:
        page.goto(f"{gateway.url}/#/{screen}")
    return page


def _shot(page: Page, name: str) -> None:
    """A screenshot for the README, of a screen that shows no leaked JavaScript values."""
    expect(page.locator("main")).not_to_contain_text(re.compile(r"\b(null|undefined|NaN)\b|\[object "))
    page.screenshot(path=str(DOCS / name), full_page=True)


def _board_state(board: Page, tx_id: int, state: str) -> None:
    expect(board.locator(f'[data-tx="{tx_id}"]')).to_have_attribute("data-state", state, timeout=TIMEOUT_MS)


def test_supervisor_and_agent_work_a_conversation_in_the_browser(gateway: Gateway, browser: Browser) -> None:
    org = create_org(gateway)
    org.waba_id, org.access_token, org.app_secret, org.numbers = add_simulated_waba(gateway, numbers=2)
    agent_id, agent_token = org.add_user(name="Ada Agent")
    DOCS.mkdir(exist_ok=True)

    supervisor = _page(browser, gateway, org.owner_token)
    expect(supervisor.get_by_role("heading", name="Link a WhatsApp Business Account")).to_be_visible()
    supervisor.get_by_label("WABA id").fill(org.waba_id)
    supervisor.get_by_label("Access token").fill("EAAG-wrong-token")
    supervisor.get_by_label("App secret").fill(org.app_secret)
    supervisor.get_by_role("button", name="Link account").click()
    refusal = supervisor.locator("#link-error")
    expect(refusal).to_contain_text("Not linked")
    expect(refusal).to_contain_text(re.compile(r"code \d+"))  # Meta's code and message, as Meta sent them
    supervisor.get_by_label("Access token").fill(org.access_token)
    supervisor.get_by_role("button", name="Link account").click()
    expect(supervisor.locator("#acc-title").locator("..")).to_contain_text(org.numbers[0])
    expect(supervisor.locator("#callback-url")).to_contain_text(f"/webhooks/whatsapp/{org.id}")
    expect(supervisor.locator("#verify-token")).not_to_be_empty()
    _shot(supervisor, "console-whatsapp.png")

    # Meta's app points its webhook at wa-router (as the supervisor would enter it in Meta's dashboard).
    gateway.simulator.set_callback_url(org.waba_id, f"{gateway.url}/webhooks/whatsapp/{org.id}")
    # A template goes to Meta's (simulated) review and comes back approved (the review webhook).
    httpx.put(f"{gateway.simulator_url}/_sim/wabas/{org.waba_id}/review",
              json={"enabled": True, "delay_s": 0.5, "status": "APPROVED"}, timeout=30).raise_for_status()
    supervisor.goto(f"{gateway.url}/#/templates")
    supervisor.get_by_label("Name (lowercase, digits, _)").fill("order_update")
    supervisor.get_by_label("Body ({{1}}, {{2}} ... for parameters)").fill("Hello {{1}}, your order is on its way.")
    supervisor.get_by_role("button", name="Submit for review").click()
    templates = supervisor.get_by_role("row", name=re.compile("order_update"))
    expect(templates).to_contain_text("en_US")
    expect(templates).to_contain_text("APPROVED", timeout=TIMEOUT_MS)
    _shot(supervisor, "console-templates.png")

    supervisor.goto(f"{gateway.url}/#/inboxes")
    supervisor.get_by_label("Name", exact=True).fill("Support")
    supervisor.get_by_label("WhatsApp number").select_option(org.numbers[0])
    supervisor.get_by_label("Assignment mode").select_option("round_robin")
    supervisor.get_by_label("Reassign an unanswered offer after (seconds, 1-900)").fill("60")
    supervisor.get_by_role("checkbox", name=re.compile("Ada Agent")).check()
    supervisor.get_by_role("button", name="Create inbox").click()
    expect(supervisor.locator("#ib-title").locator("..")).to_contain_text("Support")
    _shot(supervisor, "console-inboxes.png")
    supervisor.goto(f"{gateway.url}/#/board")

    sockets: list[tuple[WebSocketRoute, WebSocketRoute]] = []
    desk = _page(browser, gateway, agent_token, sockets=sockets)
    expect(desk.locator("#live-state")).to_have_text("connected")
    desk.get_by_role("button", name="available").click()
    expect(desk.get_by_role("button", name="available")).to_have_attribute("aria-pressed", "true")

    # Meta reports sent, delivered and read for each message wa-router sends on this number.
    plan = {"enabled": True, "sent_delay_s": 0.2, "delivered_delay_s": 0.4, "read_delay_s": 0.6}
    httpx.put(f"{gateway.simulator_url}/_sim/numbers/{org.numbers[0]}/delivery", json=plan,
              timeout=30).raise_for_status()
    # The customer writes at Meta (the simulator opens the 24-hour window and posts the signed webhook).
    written = httpx.post(f"{gateway.simulator_url}/_sim/inbound", json={
        "phone_number_id": org.numbers[0], "from": "15550001111", "name": "Carla", "type": "text",
        "fields": {"body": "Hi, my order is late"}}, timeout=30).json()
    assert written["delivered"] and written["webhook_status"] == 200, written

    offer = desk.locator("#offer")
    expect(offer).to_be_visible()
    expect(offer).to_contain_text("Carla")
    expect(desk.locator("#offer-countdown")).to_have_text(re.compile(r"^\d+ s$"))
    tx_id = int(gateway.items(org.path("/transactions"), org.owner_token)[0]["id"])
    _board_state(supervisor, tx_id, "offered")
    _shot(desk, "console-desk-ringing.png")
    _shot(supervisor, "console-board.png")

    desk.get_by_role("button", name="Accept").click()
    expect(offer).to_be_hidden()
    _board_state(supervisor, tx_id, "assigned")
    expect(desk.locator("#messages")).to_contain_text("Hi, my order is late")
    desk.get_by_label("Your reply").fill("Hi Carla, let me check your order")
    desk.get_by_role("button", name="Send").click()
    outbound = desk.locator("#messages li.outbound")
    expect(outbound).to_contain_text("let me check your order")
    # Meta's (simulated) statuses come back: the ticks climb to read.
    expect(outbound).to_have_attribute("data-state", "read", timeout=TIMEOUT_MS)
    expect(desk.locator("#window")).to_contain_text("the window closes in")

    # A reply quoting the customer's message (Meta's context.message_id).
    desk.get_by_role("button", name="Reply to: Hi, my order is late").click()
    expect(desk.locator("#replying-to")).to_contain_text("Hi, my order is late")
    desk.get_by_label("Your reply").fill("About your order: it left the warehouse today")
    desk.get_by_role("button", name="Send").click()
    quoted = outbound.filter(has_text="it left the warehouse")
    expect(quoted.locator(".quote")).to_contain_text("Hi, my order is late")
    expect(desk.locator("#replying-to")).to_have_count(0)
    inbound_wamid = desk.locator("#messages li.inbound").first.get_attribute("data-wamid")
    sent = gateway.items(org.path(f"/transactions/{tx_id}/outbound"), agent_token)
    assert [m["reply_to"] for m in sent] == [None, inbound_wamid], sent
    _shot(desk, "console-desk-conversation.png")

    # The WebSocket drops; the customer writes meanwhile; the desk reconnects from its cursor and shows it.
    assert len(sockets) == 1 and "cursor=" not in sockets[0][0].url
    page_side, server_side = sockets[0]
    page_side.close()
    server_side.close()
    expect(desk.locator("#live-state")).to_have_text("reconnecting ...")
    httpx.post(f"{gateway.simulator_url}/_sim/inbound", json={
        "phone_number_id": org.numbers[0], "from": "15550001111", "name": "Carla", "type": "text",
        "fields": {"body": "Are you still there?"}}, timeout=30).raise_for_status()
    expect(desk.locator("#live-state")).to_have_text("connected")
    expect(desk.locator("#messages")).to_contain_text("Are you still there?")
    assert len(sockets) == 2 and "cursor=" in sockets[1][0].url, [ws.url for ws, _ in sockets]

    desk.get_by_role("button", name="Close conversation").click()
    expect(desk.locator("#conversation")).to_contain_text("closed")
    _board_state(supervisor, tx_id, "closed")
    assert gateway.ok("GET", org.path(f"/transactions/{tx_id}"), org.owner_token)["agent_id"] == agent_id

    # WhatsApp Back: the agent writes first to a new number with the approved template (the place in her
    # capacity the closed conversation freed); the window is closed, so the desk offers templates only.
    back = desk.locator("#whatsapp-back")
    back.get_by_label("Customer's phone number or WhatsApp user id").fill("15550002222")
    back.get_by_label("Template name").fill("order_update")
    back.get_by_label("Parameters ({{1}}, {{2}} ...: one a line)").fill("Dana")
    back.get_by_role("button", name="Start conversation").click()
    expect(desk.locator("#conv-title")).to_contain_text("15550002222")
    expect(desk.locator("#window")).to_contain_text("window is closed")
    expect(desk.get_by_label("Your reply")).to_have_count(0)
    expect(desk.locator("#messages li.outbound")).to_contain_text("Dana")
    started = gateway.items(org.path("/transactions"), org.owner_token)[0]
    assert started["customer"]["wa_id"] == "15550002222" and started["agent_id"] == agent_id, started
    assert started["state"] == "assigned", started

    # The supervisor transfers it back to the queue from the live board: it rings for Ada again.
    supervisor.get_by_label("Conversation #").fill(str(started["id"]))
    supervisor.get_by_label("Transfer to").select_option("queue")
    supervisor.get_by_role("button", name="Transfer", exact=True).click()
    expect(supervisor.locator(f'[data-tx="{started["id"]}"]')).to_have_attribute(
        "data-state", re.compile("^(queued|offered)$"))
    expect(offer).to_be_visible()
    expect(offer).to_contain_text("15550002222")


def test_console_and_api_docs_load_without_internet(gateway: Gateway, browser: Browser) -> None:
    page = browser.new_context().new_page()
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(gateway.url) else None)
    page.goto(f"{gateway.url}/docs")
    expect(page.locator(".swagger-ui .information-container")).to_contain_text("wa-router", timeout=TIMEOUT_MS)
    page.goto(f"{gateway.url}/")
    expect(page.get_by_label("API token")).to_be_visible()
    page.get_by_label("API token").fill("war_not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#login-error")).to_have_text("That token is not valid.")
    assert outside == [], outside
