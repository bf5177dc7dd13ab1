"""The Meta Cloud API simulator as a FastAPI app: `create_simulator_app(state)`.

Graph API surface, under `/{api_version}` (default `/v25.0`), authenticated with
`Authorization: Bearer <token>` (or `?access_token=`), errors in Meta's
`{"error": {"message", "type", "code", "error_subcode", "fbtrace_id"}}` shape:

    GET  /{waba_id}                      WABA fields (`fields=` filters), or a phone number's fields
    GET  /{waba_id}/phone_numbers        paged: `limit` (default 25), `after` / `before` cursors
    POST /{phone_number_id}/messages     send; 131047 outside the 24 h window, 130429 over the
                                         per-number throughput, 132001 for an unapproved template
                                         (also 131056 over the pair limit, 132000 for a wrong
                                         parameter count; `to` or a BSUID `recipient`; an
                                         `Idempotency-Key` header makes a retry return the first
                                         answer instead of sending twice -- a simulator aid)
    POST /{waba_id}/message_templates    create (validated) -> {"id", "status": "PENDING", "category"}
    GET  /{waba_id}/message_templates    paged; filters `name`, `status`, `language`
    DELETE /{waba_id}/message_templates  `?name=` (every language) [`&hsm_id=` one of them]

Error codes: 190 (HTTP 401) for a missing/invalid/revoked token; 100 with subcode 33 (HTTP 400,
GraphMethodException) for an object the token cannot reach or that does not exist; 100
(OAuthException) for invalid parameters.

Control API under `/_sim/` (not Meta's; JSON in and out, for tests and demos):

    POST   /_sim/wabas                          add a WABA: {"name", "waba_id"?, "access_token"?,
                                                "app_secret"?, "callback_url"?, "numbers": [{"id"?,
                                                "display_phone_number", "verified_name"}]}
                                                -> the same with generated ids/secrets filled in
    PUT    /_sim/wabas/{waba_id}/callback       {"callback_url": str | null}: where webhooks go
    POST   /_sim/tokens                         {"token", "waba_ids": [...]}: grant (system-user token)
    POST   /_sim/tokens/revoke                  {"token"}
    POST   /_sim/numbers/{id}/throughput        {"messages_per_second": float}
    POST   /_sim/templates/{id}/review          {"status": "APPROVED"|"REJECTED"|..., "reason"?};
                                                also delivers message_template_status_update
    GET    /_sim/sent_messages                  {"data": [...]}; filters `phone_number_id`, `to`
    DELETE /_sim/sent_messages                  forget them
    POST   /_sim/inbound                        a customer writes: {"phone_number_id", "from", "name"?,
                                                "type"?, "fields"?, "deliver"? (default true),
                                                "age_s"?}; opens the 24 h window (backdated by
                                                age_s) and POSTs the signed webhook to the callback
    POST   /_sim/statuses                       {"message_id", "status", "errors"?, "timestamp"?}: delivers
                                                a status webhook for a message wa-router sent
    POST   /_sim/numbers/{id}/pair_interval     {"seconds"}: pair limit (131056) to one customer
    PUT    /_sim/numbers/{id}/delivery          automatic status webhooks for each accepted message:
                                                {"enabled", "sent_delay_s", "delivered_delay_s",
                                                "read_delay_s", "reorder", "duplicate", "fail_all",
                                                "fail_recipients", "failure_code", "failure_title",
                                                "retry_for_s" (re-post until a 200, as Meta retries)}
    POST   /_sim/numbers/{id}/failures          {"failures": [{"http_status", "code", "message",
                                                "accept", "delay_s"}]}: the next sends fail so
    PUT    /_sim/wabas/{waba_id}/review         automatic template review: {"enabled", "delay_s",
                                                "status", "reason", "by_name": {name: {status, reason}}}

Webhook deliveries answer `{"payload", "delivered", "webhook_status", "webhook_error"}`; without a
callback URL `delivered` is false and the payload is still returned.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import secrets
import time
from collections.abc import Sequence
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from meta.simulator import payloads
from meta.simulator.state import (
    TEMPLATE_REVIEW_STATUSES,
    DeliveryPlan,
    GivenUpStatus,
    InjectedDelay,
    InjectedFailure,
    ReviewPlan,
    SentMessage,
    SimulatorError,
    SimulatorState,
    Template,
    Waba,
    invalid_parameter,
)
from meta.simulator.webhook_sender import WebhookSender

DEFAULT_PAGE_SIZE = 25
MAX_PAGE_SIZE = 1000


# ---- helpers ---------------------------------------------------------------------------------------


def _token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() in {"bearer", "oauth"} and value.strip():
        return value.strip()
    # Graph also accepts the token as a query parameter (and puts it in `paging.next`).
    return request.query_params.get("access_token")


def _cursor(index: int) -> str:
    # Opaque like Meta's cursors, but just the base64 of a position.
    return base64.urlsafe_b64encode(f"pos:{index}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, name: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("pos:"):
            raise ValueError(raw)
        return int(raw[4:])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid_parameter(f"Invalid {name} cursor.") from None


def _page(request: Request, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Graph cursor paging: `limit`, `after`, `before`; `next`/`previous` only when there is more."""
    params = request.query_params
    try:
        limit = int(params.get("limit", DEFAULT_PAGE_SIZE))
    except ValueError:
        raise invalid_parameter("Param limit must be an integer.") from None
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise invalid_parameter(f"Param limit must be between 1 and {MAX_PAGE_SIZE}.")
    if "after" in params:
        start = _decode_cursor(params["after"], "after") + 1
    elif "before" in params:
        start = max(0, _decode_cursor(params["before"], "before") - limit)
    else:
        start = 0
    start = max(0, start)
    chunk = list(items[start:start + limit])
    body: dict[str, Any] = {"data": chunk}
    if not chunk:
        return body
    end = start + len(chunk) - 1
    paging: dict[str, Any] = {"cursors": {"before": _cursor(start), "after": _cursor(end)}}
    # Meta echoes the request's query (fields, limit, access_token if given) in the paging URLs.
    base = {k: v for k, v in params.multi_items() if k not in {"after", "before"}}
    base.setdefault("limit", str(limit))
    if end + 1 < len(items):
        paging["next"] = str(request.url.replace_query_params(**base, after=_cursor(end)))
    if start > 0:
        paging["previous"] = str(request.url.replace_query_params(**base, before=_cursor(start)))
    body["paging"] = paging
    return body


def _select_fields(request: Request, obj: dict[str, Any]) -> dict[str, Any]:
    fields = request.query_params.get("fields")
    if not fields:
        return obj
    wanted = [f.strip() for f in fields.split(",") if f.strip()]
    unknown = [f for f in wanted if f not in obj]
    if unknown:
        raise invalid_parameter(f"Tried accessing nonexisting field ({unknown[0]}) on node type.")
    # The id always comes back, as with Graph.
    return {"id": obj["id"], **{f: obj[f] for f in wanted}}


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise invalid_parameter("The request body could not be parsed as JSON.") from None


def _error_response(exc: SimulatorError) -> JSONResponse:
    headers = {}
    if exc.http_status == 401:
        # Graph's 401 carries an OAuth challenge header.
        headers["WWW-Authenticate"] = f'OAuth "Facebook Platform" "invalid_token" "{exc.message}"'
    return JSONResponse(exc.body(), status_code=exc.http_status, headers=headers)


# ---- control API models ----------------------------------------------------------------------------


class NumberIn(BaseModel):
    id: str | None = None
    display_phone_number: str
    verified_name: str = "Simulated Business"
    quality_rating: str = "GREEN"


class WabaIn(BaseModel):
    name: str
    waba_id: str | None = None
    access_token: str | None = None
    app_secret: str | None = None
    callback_url: str | None = None
    currency: str = "USD"
    timezone_id: str = "1"
    numbers: list[NumberIn] = Field(default_factory=list)


class CallbackIn(BaseModel):
    callback_url: str | None


class TokenIn(BaseModel):
    token: str
    waba_ids: list[str] = Field(default_factory=list)


class ThroughputIn(BaseModel):
    messages_per_second: float = Field(gt=0)


class ReviewIn(BaseModel):
    status: str
    reason: str | None = None


class InboundIn(BaseModel):
    phone_number_id: str
    from_: str = Field(alias="from")
    name: str | None = None
    type: str = "text"
    fields: dict[str, Any] = Field(default_factory=dict)
    deliver: bool = True
    age_s: float = Field(default=0.0, ge=0)
    # The customer's business-scoped user id (BSUID): the window opens for it too.
    user_id: str | None = None


class StatusIn(BaseModel):
    message_id: str
    status: str
    errors: list[dict[str, Any]] | None = None
    # Meta's event time (epoch seconds); now when omitted.
    timestamp: float | None = None


class PairIntervalIn(BaseModel):
    seconds: float = Field(ge=0)


class DeliveryPlanIn(BaseModel):
    enabled: bool = True
    sent_delay_s: float | None = Field(default=0.05, ge=0)
    delivered_delay_s: float | None = Field(default=0.1, ge=0)
    read_delay_s: float | None = Field(default=0.2, ge=0)
    reorder: bool = False
    duplicate: bool = False
    fail_all: bool = False
    fail_recipients: list[str] = Field(default_factory=list)
    failure_code: int = 131026
    failure_title: str = "Message undeliverable"
    retry_for_s: float = Field(default=0.0, ge=0)


class ReviewOutcomeIn(BaseModel):
    status: str
    reason: str | None = None


class ReviewPlanIn(BaseModel):
    enabled: bool = True
    delay_s: float = Field(default=0.2, ge=0)
    status: str = "APPROVED"
    reason: str | None = None
    by_name: dict[str, ReviewOutcomeIn] = Field(default_factory=dict)


class InjectedFailureIn(BaseModel):
    http_status: int = Field(default=500, ge=400, le=599)
    code: int = 131000
    message: str = "Something went wrong"
    accept: bool = False
    delay_s: float = Field(default=0.0, ge=0)


class FailuresIn(BaseModel):
    failures: list[InjectedFailureIn]


# ---- app -------------------------------------------------------------------------------------------


def create_simulator_app(state: SimulatorState, api_version: str = "v25.0") -> FastAPI:
    app = FastAPI(title="Meta Cloud API simulator", version=api_version,
                  description="Simulated WhatsApp Cloud API (Graph) plus a /_sim control API.")
    app.state.sim = state
    graph = APIRouter(prefix=f"/{api_version}")

    @app.exception_handler(SimulatorError)
    async def _sim_error(_request: Request, exc: SimulatorError) -> JSONResponse:
        return _error_response(exc)

    # -- Graph API ---------------------------------------------------------------------------------

    @graph.get("/{object_id}")
    async def get_object(object_id: str, request: Request) -> dict[str, Any]:
        token = _token(request)
        granted = state.authorize(token)
        if object_id in state.wabas and object_id in granted:
            return _select_fields(request, state.wabas[object_id].to_json())
        # A phone number node is also readable by id.
        return _select_fields(request, state.number_for(token, object_id).to_json())

    @graph.get("/{waba_id}/phone_numbers")
    async def phone_numbers(waba_id: str, request: Request) -> dict[str, Any]:
        numbers = [n.to_json() for n in state.list_numbers(_token(request), waba_id)]
        if request.query_params.get("fields"):
            numbers = [_select_fields(request, n) for n in numbers]
        return _page(request, numbers)

    @graph.post("/{phone_number_id}/messages")
    async def send_message(phone_number_id: str, request: Request) -> dict[str, Any]:
        token = _token(request)
        state.number_for(token, phone_number_id, method="post")  # auth before parsing, like Graph
        payload = await _json_body(request)
        try:
            response, sent = state.accept_message(token, phone_number_id, payload,
                                                  request.headers.get("idempotency-key"))
        except InjectedDelay as slow:
            schedule_statuses(slow.sent)
            await asyncio.sleep(slow.delay_s)
            return slow.response
        if sent is not None:
            schedule_statuses(sent)
        return response

    @graph.post("/{waba_id}/message_templates")
    async def create_template(waba_id: str, request: Request) -> dict[str, Any]:
        token = _token(request)
        state.waba_for(token, waba_id, method="post")
        template = state.create_template(token, waba_id, await _json_body(request))
        schedule_review(template)
        return {"id": template.id, "status": template.status, "category": template.category}

    @graph.delete("/{waba_id}/message_templates")
    async def delete_template(waba_id: str, request: Request) -> dict[str, Any]:
        name = request.query_params.get("name")
        if not name:
            state.waba_for(_token(request), waba_id, method="delete")
            raise invalid_parameter("The parameter name is required.")
        state.delete_template(_token(request), waba_id, name, request.query_params.get("hsm_id"))
        return {"success": True}

    @graph.get("/{waba_id}/message_templates")
    async def list_templates(waba_id: str, request: Request) -> dict[str, Any]:
        templates = [t.to_json() for t in state.list_templates(_token(request), waba_id)]
        params = request.query_params
        for key in ("name", "status", "language"):
            if key in params:
                templates = [t for t in templates if t[key] == params[key]]
        if params.get("fields"):
            templates = [_select_fields(request, t) for t in templates]
        return _page(request, templates)

    @graph.api_route("/{object_id}/{edge:path}", methods=["GET", "POST", "DELETE"])
    async def unknown_edge(object_id: str, edge: str, request: Request) -> dict[str, Any]:
        state.authorize(_token(request))
        raise invalid_parameter(f"Unknown path components: /{edge}")

    app.include_router(graph)

    # -- webhooks the simulator sends by itself (statuses, template reviews) -----------------------

    tasks: set[asyncio.Task[Any]] = set()
    clients: dict[str, httpx.AsyncClient] = {}

    def background(coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def post_webhook(waba: Waba, payload: dict[str, Any], retry_for_s: float = 0.0) -> tuple[int, str] | None:
        """Post a webhook of the simulator's own: None once the receiver answered 200, else (attempts, the last
        answer: a status code or the error that stood for one)."""
        if not waba.callback_url:
            return 0, "no callback URL"
        # One pooled client for the simulator's own webhooks (bursts post hundreds of statuses).
        client = clients.get("webhooks")
        if client is None:
            client = clients["webhooks"] = httpx.AsyncClient(timeout=10.0)
        # Without `retry_for_s` an unreachable receiver just misses it; with it, it is posted again with
        # back-off until a 200 or the time is up, as Meta retries.
        deadline = time.monotonic() + retry_for_s
        backoff = 0.2
        attempts = 0
        while True:
            attempts += 1
            try:
                answer = await WebhookSender(waba.callback_url, waba.app_secret, client=client).send(payload)
                if answer.status_code == 200:
                    return None
                last = str(answer.status_code)
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            if time.monotonic() + backoff > deadline:
                return attempts, last
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    def schedule_statuses(sent: SentMessage) -> None:
        plan = state.delivery_plan(sent.phone_number_id)
        if plan.enabled:
            background(post_statuses(sent, plan))

    async def post_statuses(sent: SentMessage, plan: DeliveryPlan) -> None:
        number = state.numbers[sent.phone_number_id]
        waba = state.wabas[number.waba_id]
        category = _category_of(sent)
        started = time.monotonic()
        for post_after, status, happened_after in plan.statuses_for(sent.to):
            await asyncio.sleep(max(0.0, started + post_after - time.monotonic()))
            errors = [payloads.error_object(plan.failure_code, plan.failure_title,
                                            "Message failed to send.")] if status == "failed" else None
            payload = payloads.status_update(number.waba_id, number.id, number.display_phone_number, sent.id,
                                             sent.to, status, category=category, errors=errors,
                                             timestamp=sent.timestamp + happened_after)
            missed = await post_webhook(waba, payload, plan.retry_for_s)
            if missed is not None:
                state.record_given_up(GivenUpStatus(sent.id, status, *missed))

    reviews_scheduled: set[str] = set()

    def schedule_review(template: Template) -> None:
        """Under automatic review, the template's outcome after the WABA's delay (once per template)."""
        plan = state.review_plan(template.waba_id)
        if plan.enabled and template.id not in reviews_scheduled:
            reviews_scheduled.add(template.id)
            status, reason = plan.outcome(template.name)
            background(review_later(template.id, plan.delay_s, status, reason))

    async def review_later(template_id: str, delay_s: float, status: str, reason: str | None) -> None:
        await asyncio.sleep(delay_s)
        if template_id not in state.templates:
            return
        template = state.review_template(template_id, status, reason)
        await post_webhook(state.wabas[template.waba_id], payloads.template_status_update(
            template.waba_id, template.id, template.name, template.language, template.status,
            template.rejected_reason))

    def _category_of(sent: SentMessage) -> str:
        if sent.type != "template":
            return "service"  # free-form replies inside the window are service messages
        name = sent.payload.get("template", {}).get("name")
        waba = state.wabas[state.numbers[sent.phone_number_id].waba_id]
        return next((state.templates[t].category.lower() for t in waba.template_ids
                     if state.templates[t].name == name), "marketing")

    @app.on_event("shutdown")
    async def _close_clients() -> None:
        for client in clients.values():
            await client.aclose()

    # -- control API -------------------------------------------------------------------------------

    sim = APIRouter(prefix="/_sim", tags=["simulator control"])

    async def deliver(waba: Waba, payload: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {"payload": payload, "delivered": False, "webhook_status": None,
                                  "webhook_error": None}
        if not waba.callback_url:
            return result
        async with WebhookSender(waba.callback_url, waba.app_secret) as sender:
            try:
                response = await sender.send(payload)
            except Exception as exc:  # report any transport failure to the caller instead of a 500
                result["webhook_error"] = f"{type(exc).__name__}: {exc}"
                return result
        result["delivered"] = response.is_success
        result["webhook_status"] = response.status_code
        return result

    def not_found(what: str) -> JSONResponse:
        return JSONResponse({"detail": f"{what} not found"}, status_code=404)

    @sim.post("/wabas")
    async def add_waba(body: WabaIn) -> Any:
        waba_id = body.waba_id or state.new_id()
        if waba_id in state.wabas:
            return JSONResponse({"detail": f"WABA {waba_id} already exists"}, status_code=409)
        numbers = [(n.id or state.new_id(), n.display_phone_number, n.verified_name) for n in body.numbers]
        clash = [n[0] for n in numbers if n[0] in state.numbers]
        if clash:
            return JSONResponse({"detail": f"phone number {clash[0]} already exists"}, status_code=409)
        token = body.access_token or "EAAsim" + secrets.token_urlsafe(32)
        app_secret = body.app_secret or secrets.token_hex(16)
        waba = state.add_waba(waba_id, body.name, token, app_secret, numbers, currency=body.currency,
                              timezone_id=body.timezone_id, callback_url=body.callback_url)
        for spec, (number_id, _, _) in zip(body.numbers, numbers, strict=True):
            state.numbers[number_id].quality_rating = spec.quality_rating
        return {"waba_id": waba.id, "name": waba.name, "access_token": token, "app_secret": app_secret,
                "callback_url": waba.callback_url,
                "message_template_namespace": waba.message_template_namespace,
                "numbers": [state.numbers[i].to_json() for i in waba.number_ids]}

    @sim.put("/wabas/{waba_id}/callback")
    async def set_callback(waba_id: str, body: CallbackIn) -> Any:
        if waba_id not in state.wabas:
            return not_found("WABA")
        state.set_callback_url(waba_id, body.callback_url)
        return {"waba_id": waba_id, "callback_url": body.callback_url}

    @sim.post("/tokens")
    async def grant_token(body: TokenIn) -> Any:
        missing = [w for w in body.waba_ids if w not in state.wabas]
        if missing:
            return not_found(f"WABA {missing[0]}")
        state.grant_token(body.token, *body.waba_ids)
        return {"granted": body.waba_ids}

    @sim.post("/tokens/revoke")
    async def revoke_token(body: TokenIn) -> dict[str, Any]:
        state.revoke_token(body.token)
        return {"revoked": True}

    @sim.post("/numbers/{phone_number_id}/throughput")
    async def throughput(phone_number_id: str, body: ThroughputIn) -> Any:
        if phone_number_id not in state.numbers:
            return not_found("phone number")
        state.set_throughput(phone_number_id, body.messages_per_second)
        return {"phone_number_id": phone_number_id, "messages_per_second": body.messages_per_second}

    @sim.post("/numbers/{phone_number_id}/pair_interval")
    async def pair_interval(phone_number_id: str, body: PairIntervalIn) -> Any:
        if phone_number_id not in state.numbers:
            return not_found("phone number")
        state.set_pair_interval(phone_number_id, body.seconds)
        return {"phone_number_id": phone_number_id, "seconds": body.seconds}

    @sim.put("/numbers/{phone_number_id}/delivery")
    async def delivery_plan(phone_number_id: str, body: DeliveryPlanIn) -> Any:
        if phone_number_id not in state.numbers:
            return not_found("phone number")
        state.set_delivery_plan(phone_number_id, DeliveryPlan(**{**body.model_dump(),
                                                                 "fail_recipients": set(body.fail_recipients)}))
        return {"phone_number_id": phone_number_id, **body.model_dump()}

    @sim.post("/numbers/{phone_number_id}/failures")
    async def inject_failures(phone_number_id: str, body: FailuresIn) -> Any:
        if phone_number_id not in state.numbers:
            return not_found("phone number")
        state.inject_send_failures(phone_number_id, [InjectedFailure(**f.model_dump()) for f in body.failures])
        return {"phone_number_id": phone_number_id, "queued": len(body.failures)}

    @sim.put("/wabas/{waba_id}/review")
    async def review_plan(waba_id: str, body: ReviewPlanIn) -> Any:
        if waba_id not in state.wabas:
            return not_found("WABA")
        statuses = [body.status, *(o.status for o in body.by_name.values())]
        unknown = [s for s in statuses if s.upper() not in TEMPLATE_REVIEW_STATUSES]
        if unknown:
            return JSONResponse({"detail": f"unknown template status {unknown[0]}"}, status_code=422)
        state.set_review_plan(waba_id, ReviewPlan(
            enabled=body.enabled, delay_s=body.delay_s, status=body.status.upper(), reason=body.reason,
            by_name={name: (o.status.upper(), o.reason) for name, o in body.by_name.items()}))
        for template in state.pending_templates(waba_id):  # those submitted before review was switched on
            schedule_review(template)
        return {"waba_id": waba_id, **body.model_dump()}

    @sim.post("/templates/{template_id}/review")
    async def review_template(template_id: str, body: ReviewIn) -> Any:
        if template_id not in state.templates:
            return not_found("template")
        try:
            template = state.review_template(template_id, body.status, body.reason)
        except ValueError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=422)
        payload = payloads.template_status_update(
            template.waba_id, template.id, template.name, template.language, template.status,
            template.rejected_reason)
        return {"template": template.to_json(), **await deliver(state.wabas[template.waba_id], payload)}

    @sim.get("/sent_messages")
    async def sent_messages(request: Request) -> dict[str, Any]:
        params = request.query_params
        data = [m.to_json() for m in state.sent_messages
                if params.get("phone_number_id", m.phone_number_id) == m.phone_number_id
                and params.get("to", m.to) == m.to]
        return {"data": data}

    @sim.delete("/sent_messages")
    async def clear_sent_messages() -> dict[str, Any]:
        count = len(state.sent_messages)
        state.sent_messages.clear()
        return {"deleted": count}

    @sim.post("/inbound")
    async def inbound(body: InboundIn) -> Any:
        number = state.numbers.get(body.phone_number_id)
        if number is None:
            return not_found("phone number")
        timestamp = state.clock() - body.age_s
        try:
            payload = payloads.inbound_message(
                number.waba_id, number.id, number.display_phone_number, body.from_, body.name or body.from_,
                body.type, timestamp=timestamp, **body.fields)
        except (TypeError, ValueError) as exc:
            return JSONResponse({"detail": str(exc)}, status_code=422)
        state.record_inbound(number.id, body.from_, at=timestamp)
        if body.user_id:
            state.record_inbound(number.id, body.user_id, at=timestamp)
        message_id = payload["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
        result = {"message_id": message_id, "payload": payload, "delivered": False,
                  "webhook_status": None, "webhook_error": None}
        if body.deliver:
            result.update(await deliver(state.wabas[number.waba_id], payload))
        return result

    @sim.post("/statuses")
    async def statuses(body: StatusIn) -> Any:
        sent = next((m for m in state.sent_messages if m.id == body.message_id), None)
        if sent is None:
            return not_found("sent message")
        number = state.numbers[sent.phone_number_id]
        try:
            payload = payloads.status_update(number.waba_id, number.id, number.display_phone_number, sent.id,
                                             sent.to, body.status, category=_category_of(sent), errors=body.errors,
                                             timestamp=body.timestamp)
        except ValueError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=422)
        return await deliver(state.wabas[number.waba_id], payload)

    app.include_router(sim)
    return app
