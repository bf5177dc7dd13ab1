"""In-memory state of the Meta Cloud API simulator.

Everything the simulated Graph API knows lives in one `SimulatorState`: WhatsApp
Business Accounts (WABAs) with their phone numbers and app secrets, access tokens
and which WABAs each may reach, message templates and their review status, the
last inbound message time per customer (for the 24-hour customer service window),
a per-number throughput limit, and every message wa-router sent (for assertions).

The HTTP app (`meta.simulator.app`) is a thin layer over the methods here; the
methods raise `SimulatorError` carrying Meta's error fields, which the app turns
into Meta's `{"error": {...}}` body. All access happens on the server's single
event loop, so plain dicts suffice; a lock still guards mutations because tests
also poke the state from their own thread while the server runs.
"""

from __future__ import annotations

import base64
import re
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

# The customer service window: free-form messages only within 24 h of the customer's last message.
SERVICE_WINDOW_S = 24 * 60 * 60
# Cloud API's default throughput per business phone number.
DEFAULT_MPS = 80.0

TEMPLATE_CATEGORIES = frozenset({"MARKETING", "UTILITY", "AUTHENTICATION"})
TEMPLATE_REVIEW_STATUSES = frozenset({"APPROVED", "REJECTED", "PENDING", "PAUSED", "DISABLED"})
MESSAGE_TYPES = frozenset({
    "text", "template", "image", "audio", "video", "document", "sticker", "location",
    "contacts", "interactive", "reaction",
})
_MEDIA_TYPES = frozenset({"image", "audio", "video", "document", "sticker"})
_TEMPLATE_NAME_RE = re.compile(r"^[a-z0-9_]{1,512}$")
_LANGUAGE_RE = re.compile(r"^[a-z]{2,3}(_[A-Za-z]{2,4})?$")
_PLACEHOLDER_RE = re.compile(r"\{\{\s*(\d+)\s*\}\}")
# Meta's pair limit: about one message every 6 s to the same customer from one number (error 131056).
DEFAULT_PAIR_INTERVAL_S = 6.0


def fbtrace_id() -> str:
    """Meta attaches a random trace id to every error; clients log it for support tickets."""
    return secrets.token_urlsafe(9).replace("-", "A").replace("_", "B")


def new_wamid() -> str:
    """A `wamid.` id shaped like Meta's: base64 of an opaque binary blob."""
    return "wamid." + base64.b64encode(b"\x15\x02\x00\x11\x18\x12" + secrets.token_bytes(24)).decode()


class SimulatorError(Exception):
    """A Graph API error: the HTTP status plus the fields of Meta's `error` object."""

    def __init__(self, http_status: int, code: int, message: str, type_: str = "OAuthException",
                 error_subcode: int | None = None, details: str | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.message = message
        self.type = type_
        self.error_subcode = error_subcode
        self.details = details

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": self.type, "code": self.code}
        if self.error_subcode is not None:
            error["error_subcode"] = self.error_subcode
        if self.details is not None:
            # Cloud API errors carry a human explanation under error_data.details.
            error["error_data"] = {"messaging_product": "whatsapp", "details": self.details}
        error["fbtrace_id"] = fbtrace_id()
        return {"error": error}


def invalid_token() -> SimulatorError:
    return SimulatorError(401, 190, "Invalid OAuth access token - Cannot parse access token")


def unsupported_object(object_id: str, method: str = "get") -> SimulatorError:
    return SimulatorError(
        400, 100,
        f"Unsupported {method} request. Object with ID '{object_id}' does not exist, cannot be loaded due "
        "to missing permissions, or does not support this operation. Please read the Graph API "
        "documentation at https://developers.facebook.com/docs/graph-api",
        type_="GraphMethodException", error_subcode=33,
    )


def invalid_parameter(message: str) -> SimulatorError:
    return SimulatorError(400, 100, f"(#100) {message}", details=message)


@dataclass
class PhoneNumber:
    id: str
    waba_id: str
    display_phone_number: str
    verified_name: str
    quality_rating: str = "GREEN"
    code_verification_status: str = "VERIFIED"
    platform_type: str = "CLOUD_API"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "display_phone_number": self.display_phone_number,
            "verified_name": self.verified_name,
            "quality_rating": self.quality_rating,
            "code_verification_status": self.code_verification_status,
            "platform_type": self.platform_type,
        }


@dataclass
class Template:
    id: str
    waba_id: str
    name: str
    language: str
    category: str
    components: list[dict[str, Any]]
    status: str = "PENDING"
    rejected_reason: str = "NONE"

    def placeholder_count(self, kind: str) -> int:
        """How many distinct {{n}} placeholders the component of `kind` (HEADER/BODY) holds."""
        for component in self.components:
            if str(component.get("type", "")).upper() == kind and isinstance(component.get("text"), str):
                return len(set(_PLACEHOLDER_RE.findall(component["text"])))
        return 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "language": self.language,
            "category": self.category,
            "components": self.components,
            "status": self.status,
            "rejected_reason": self.rejected_reason,
        }


@dataclass
class Waba:
    id: str
    name: str
    app_secret: str
    currency: str = "USD"
    timezone_id: str = "1"
    message_template_namespace: str = ""
    callback_url: str | None = None
    number_ids: list[str] = field(default_factory=list)
    template_ids: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "currency": self.currency,
            "timezone_id": self.timezone_id,
            "message_template_namespace": self.message_template_namespace,
        }


@dataclass
class DeliveryPlan:
    """How the simulator reports delivery of each accepted message through status webhooks.

    Statuses go out `sent_delay_s`, `delivered_delay_s`, `read_delay_s` after the send (None: that
    status never comes). `reorder` posts them newest first; `duplicate` posts each twice; messages to
    `fail_recipients` (or every message with `fail_all`) get `sent` then `failed` with `failure_code`.
    `retry_for_s` > 0: a status webhook the receiver does not answer 200 is posted again, with back-off,
    for up to that long (Meta retries for days); 0 posts each once.
    """

    enabled: bool = False
    sent_delay_s: float | None = 0.05
    delivered_delay_s: float | None = 0.1
    read_delay_s: float | None = 0.2
    reorder: bool = False
    duplicate: bool = False
    fail_all: bool = False
    fail_recipients: set[str] = field(default_factory=set)
    failure_code: int = 131026
    failure_title: str = "Message undeliverable"
    retry_for_s: float = 0.0

    def statuses_for(self, recipient: str) -> list[tuple[float, str, float]]:
        """(post after s, status, happened after s) in the order they are posted."""
        failing = self.fail_all or recipient in self.fail_recipients
        steps = [(self.sent_delay_s, "sent")]
        steps += [(self.delivered_delay_s, "failed")] if failing else [
            (self.delivered_delay_s, "delivered"), (self.read_delay_s, "read")]
        planned = [(delay, status, delay) for delay, status in steps if delay is not None]
        if self.reorder:
            # Newest first, all at the latest delay: the receiver sees them backwards, Meta's
            # timestamps still telling the true order.
            last = max((d for d, _, _ in planned), default=0.0)
            planned = [(last, status, happened) for _, status, happened in reversed(planned)]
        if self.duplicate:
            planned = [item for item in planned for _ in range(2)]
        return planned


@dataclass
class ReviewPlan:
    """Template review: after `delay_s`, each new template gets `status` (per-name overrides win)."""

    enabled: bool = False
    delay_s: float = 0.2
    status: str = "APPROVED"
    reason: str | None = None
    by_name: dict[str, tuple[str, str | None]] = field(default_factory=dict)

    def outcome(self, name: str) -> tuple[str, str | None]:
        return self.by_name.get(name, (self.status, self.reason))


@dataclass
class InjectedFailure:
    """The next send on a number fails like this; `accept` records the message first (an in-doubt
    send: Meta accepted it but the answer never reached the client); `delay_s` answers late."""

    http_status: int = 500
    code: int = 131000
    message: str = "Something went wrong"
    accept: bool = False
    delay_s: float = 0.0


@dataclass
class SentMessage:
    """One message wa-router sent through the simulator, as accepted."""

    id: str
    phone_number_id: str
    to: str
    type: str
    payload: dict[str, Any]
    timestamp: float
    # The client's Idempotency-Key header, when it sent one (a retry with it is not sent twice).
    idempotency_key: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "phone_number_id": self.phone_number_id, "to": self.to, "type": self.type,
                "payload": self.payload, "timestamp": self.timestamp, "idempotency_key": self.idempotency_key}


@dataclass(frozen=True)
class GivenUpStatus:
    """A status webhook the simulator stopped posting: no 200 within its plan's `retry_for_s`."""

    wamid: str
    status: str
    attempts: int
    last_answer: str  # the receiver's last status code, or the error that stood for it


class SimulatorState:
    """The simulated Meta side. `clock` is injectable so tests can age the 24-hour window."""

    def __init__(self, clock: Callable[[], float] = time.time, default_mps: float = DEFAULT_MPS,
                 pair_interval_s: float = DEFAULT_PAIR_INTERVAL_S) -> None:
        self.clock = clock
        self.default_mps = default_mps
        self.default_pair_interval_s = pair_interval_s
        self.default_delivery = DeliveryPlan()
        self.wabas: dict[str, Waba] = {}
        self.numbers: dict[str, PhoneNumber] = {}
        self.templates: dict[str, Template] = {}
        self.sent_messages: list[SentMessage] = []
        # Status webhooks posted until their retry time ran out without a 200: what a receiver never took.
        self.statuses_given_up: list[GivenUpStatus] = []
        # token -> WABA ids it grants; a system-user token may grant several.
        self._tokens: dict[str, set[str]] = {}
        self._revoked: set[str] = set()
        # (phone_number_id, wa_id) -> epoch seconds of the customer's last inbound message.
        self._last_inbound: dict[tuple[str, str], float] = {}
        self._mps: dict[str, float] = {}
        self._send_times: dict[str, deque[float]] = {}
        self._pair_interval: dict[str, float] = {}
        # (phone_number_id, recipient) -> when the last message to that customer was accepted.
        self._last_pair_send: dict[tuple[str, str], float] = {}
        self._delivery: dict[str, DeliveryPlan] = {}
        self._reviews: dict[str, ReviewPlan] = {}
        self._injected: dict[str, deque[InjectedFailure]] = {}
        # (phone_number_id, idempotency key) -> the answer first given for it.
        self._idempotent: dict[tuple[str, str], dict[str, Any]] = {}
        self._next_id = 100_000_000_000_000
        self._lock = threading.RLock()

    # ---- setup ---------------------------------------------------------------------------------

    def record_given_up(self, given_up: GivenUpStatus) -> None:
        with self._lock:
            self.statuses_given_up.append(given_up)

    def new_id(self) -> str:
        """Graph object ids are long decimal strings."""
        with self._lock:
            self._next_id += 1
            return str(self._next_id)

    def add_waba(self, waba_id: str, name: str, access_token: str, app_secret: str,
                 numbers: Iterable[tuple[str, str, str]] = (), *, currency: str = "USD",
                 timezone_id: str = "1", callback_url: str | None = None) -> Waba:
        """Add a WABA reachable with `access_token`, with numbers as (id, display number, verified name)."""
        with self._lock:
            if waba_id in self.wabas:
                raise ValueError(f"WABA {waba_id} already exists")
            waba = Waba(id=waba_id, name=name, app_secret=app_secret, currency=currency,
                        timezone_id=timezone_id, callback_url=callback_url,
                        # Meta's namespace is a UUID written with underscores.
                        message_template_namespace=str(uuid.uuid4()).replace("-", "_"))
            self.wabas[waba_id] = waba
            self.grant_token(access_token, waba_id)
            for phone_number_id, display, verified_name in numbers:
                self.add_number(waba_id, phone_number_id, display, verified_name)
            return waba

    def add_number(self, waba_id: str, phone_number_id: str, display_phone_number: str,
                   verified_name: str, quality_rating: str = "GREEN") -> PhoneNumber:
        with self._lock:
            waba = self.wabas[waba_id]
            if phone_number_id in self.numbers:
                raise ValueError(f"phone number {phone_number_id} already exists")
            number = PhoneNumber(id=phone_number_id, waba_id=waba_id,
                                 display_phone_number=display_phone_number,
                                 verified_name=verified_name, quality_rating=quality_rating)
            self.numbers[phone_number_id] = number
            waba.number_ids.append(phone_number_id)
            return number

    def grant_token(self, token: str, *waba_ids: str) -> None:
        """Let `token` reach more WABAs (a system-user token assigned to several accounts)."""
        with self._lock:
            for waba_id in waba_ids:
                if waba_id not in self.wabas:
                    raise KeyError(f"unknown WABA {waba_id}")
            self._tokens.setdefault(token, set()).update(waba_ids)
            self._revoked.discard(token)

    def revoke_token(self, token: str) -> None:
        with self._lock:
            self._revoked.add(token)

    def set_callback_url(self, waba_id: str, callback_url: str | None) -> None:
        with self._lock:
            self.wabas[waba_id].callback_url = callback_url

    def set_throughput(self, phone_number_id: str, messages_per_second: float) -> None:
        """Per-number limit for error 130429; the default is Cloud API's 80 mps."""
        with self._lock:
            self._mps[phone_number_id] = messages_per_second

    def set_pair_interval(self, phone_number_id: str, seconds: float) -> None:
        """Per-number pair limit (131056): at most one message per `seconds` to the same customer."""
        with self._lock:
            self._pair_interval[phone_number_id] = seconds

    def set_delivery_plan(self, phone_number_id: str, plan: DeliveryPlan) -> None:
        with self._lock:
            self._delivery[phone_number_id] = plan

    def delivery_plan(self, phone_number_id: str) -> DeliveryPlan:
        return self._delivery.get(phone_number_id, self.default_delivery)

    def set_review_plan(self, waba_id: str, plan: ReviewPlan) -> None:
        with self._lock:
            self._reviews[waba_id] = plan

    def review_plan(self, waba_id: str) -> ReviewPlan:
        return self._reviews.get(waba_id, ReviewPlan())

    def pending_templates(self, waba_id: str) -> list[Template]:
        """The WABA's templates still awaiting review (created before automatic review was switched on)."""
        with self._lock:
            waba = self.wabas.get(waba_id)
            ids = list(waba.template_ids) if waba is not None else []
            return [self.templates[t] for t in ids if t in self.templates and self.templates[t].status == "PENDING"]

    def inject_send_failures(self, phone_number_id: str, failures: Iterable[InjectedFailure]) -> None:
        """The next sends on the number fail like these, in order (then sends succeed again)."""
        with self._lock:
            self._injected.setdefault(phone_number_id, deque()).extend(failures)

    def record_inbound(self, phone_number_id: str, wa_id: str, at: float | None = None) -> None:
        """The customer wrote to this number at `at` (default now): opens the 24-hour window."""
        with self._lock:
            self._last_inbound[(phone_number_id, wa_id)] = self.clock() if at is None else at

    def last_inbound(self, phone_number_id: str, wa_id: str) -> float | None:
        return self._last_inbound.get((phone_number_id, wa_id))

    def app_secret_for_number(self, phone_number_id: str) -> str:
        return self.wabas[self.numbers[phone_number_id].waba_id].app_secret

    # ---- authorization ---------------------------------------------------------------------------

    def authorize(self, token: str | None) -> set[str]:
        """The WABA ids `token` grants; error 190 for a missing, unknown or revoked token."""
        if not token or token in self._revoked or token not in self._tokens:
            raise invalid_token()
        return self._tokens[token]

    def waba_for(self, token: str | None, waba_id: str, method: str = "get") -> Waba:
        granted = self.authorize(token)
        # Meta does not reveal whether an object exists when the token may not see it: same error.
        if waba_id not in granted or waba_id not in self.wabas:
            raise unsupported_object(waba_id, method)
        return self.wabas[waba_id]

    def number_for(self, token: str | None, phone_number_id: str, method: str = "get") -> PhoneNumber:
        granted = self.authorize(token)
        number = self.numbers.get(phone_number_id)
        if number is None or number.waba_id not in granted:
            raise unsupported_object(phone_number_id, method)
        return number

    # ---- Graph operations ------------------------------------------------------------------------

    def list_numbers(self, token: str | None, waba_id: str) -> list[PhoneNumber]:
        waba = self.waba_for(token, waba_id)
        return [self.numbers[i] for i in waba.number_ids]

    def send_message(self, token: str | None, phone_number_id: str, payload: Any,
                     idempotency_key: str | None = None) -> dict[str, Any]:
        """POST /{phone_number_id}/messages: validate, enforce window/throughput/template, record."""
        return self.accept_message(token, phone_number_id, payload, idempotency_key)[0]

    def accept_message(self, token: str | None, phone_number_id: str, payload: Any,
                       idempotency_key: str | None = None) -> tuple[dict[str, Any], SentMessage | None]:
        """As `send_message`, also returning the newly recorded message (None for an idempotent replay)."""
        number = self.number_for(token, phone_number_id, method="post")
        if not isinstance(payload, dict):
            raise invalid_parameter("Request body must be a JSON object")
        if payload.get("messaging_product") != "whatsapp":
            raise invalid_parameter("The parameter messaging_product is required and must be 'whatsapp'.")
        to = payload.get("to")
        recipient = payload.get("recipient")
        if to is None and isinstance(recipient, str) and recipient.strip():
            # A business-scoped user id (BSUID): customers known only by it, without a phone number.
            key = recipient.strip()
            contact = {"input": recipient, "user_id": key}
        elif not isinstance(to, str) or not to.lstrip("+").isdigit():
            raise invalid_parameter("The parameter to is required and must be a phone number (digits), "
                                    "or give recipient (a business-scoped user id).")
        else:
            key = to.lstrip("+")
            contact = {"input": to, "wa_id": key}
        msg_type = payload.get("type", "text")
        if msg_type not in MESSAGE_TYPES:
            raise invalid_parameter(f"Param type must be one of {{{', '.join(sorted(MESSAGE_TYPES))}}}"
                                    f" - got \"{msg_type}\".")
        body = payload.get(msg_type)
        if not isinstance(body, dict):
            raise invalid_parameter(f"The parameter {msg_type} is required and must be an object.")
        _validate_message_body(msg_type, body)

        with self._lock:
            if idempotency_key is not None and (phone_number_id, idempotency_key) in self._idempotent:
                return self._idempotent[(phone_number_id, idempotency_key)], None
            now = self.clock()
            injected = self._injected.get(phone_number_id)
            failure = injected.popleft() if injected else None
            if failure is not None and not failure.accept and failure.delay_s == 0:
                raise SimulatorError(failure.http_status, failure.code, failure.message, type_="OAuthException")
            self._check_throughput(phone_number_id, now)
            if msg_type == "template":
                self._check_template(number.waba_id, body)
            else:
                last = self._last_inbound.get((phone_number_id, key))
                # Free-form messages only inside the customer service window.
                if last is None or now - last > SERVICE_WINDOW_S:
                    raise SimulatorError(
                        400, 131047, "Re-engagement message",
                        details="Message failed to send because more than 24 hours have passed since the "
                                "customer last replied to this number.")
            self._check_pair_limit(phone_number_id, key, now)
            message_id = new_wamid()
            sent = SentMessage(id=message_id, phone_number_id=phone_number_id, to=key, type=msg_type,
                               payload=payload, timestamp=now, idempotency_key=idempotency_key)
            self.sent_messages.append(sent)
            response = {
                "messaging_product": "whatsapp",
                "contacts": [contact],
                "messages": [{"id": message_id, "message_status": "accepted"}] if msg_type == "template"
                else [{"id": message_id}],
            }
            if idempotency_key is not None:
                self._idempotent[(phone_number_id, idempotency_key)] = response
            if failure is not None and failure.delay_s == 0:
                # Accepted, yet the client is told it failed: its retry must not send it twice.
                raise SimulatorError(failure.http_status, failure.code, failure.message)
        if failure is not None:
            # Answer late (after `delay_s`): the app sleeps on `InjectedDelay` before answering.
            raise InjectedDelay(failure.delay_s, response, sent)
        return response, sent

    def _check_pair_limit(self, phone_number_id: str, recipient: str, now: float) -> None:
        interval = self._pair_interval.get(phone_number_id, self.default_pair_interval_s)
        last = self._last_pair_send.get((phone_number_id, recipient))
        if interval > 0 and last is not None and now - last < interval:
            raise SimulatorError(
                400, 131056, "(Business Account, Consumer Account) pair rate limit hit",
                details="Too many messages sent from the sender phone number to the same recipient phone "
                        "number in a short period of time.")
        self._last_pair_send[(phone_number_id, recipient)] = now

    def _check_throughput(self, phone_number_id: str, now: float) -> None:
        # Sliding one-second window of accepted sends per number.
        limit = self._mps.get(phone_number_id, self.default_mps)
        times = self._send_times.setdefault(phone_number_id, deque())
        while times and now - times[0] >= 1.0:
            times.popleft()
        if len(times) >= limit:
            raise SimulatorError(
                400, 130429, "Rate limit hit",
                details="Cloud API message throughput has been reached. Try again later or reduce the "
                        "frequency with which the business sends messages.")
        times.append(now)

    def _check_template(self, waba_id: str, body: dict[str, Any]) -> None:
        name = body.get("name")
        language = body.get("language")
        code = language.get("code") if isinstance(language, dict) else None
        if not isinstance(name, str) or not isinstance(code, str):
            raise invalid_parameter("template requires name and language.code")
        template = next((self.templates[t] for t in self.wabas[waba_id].template_ids
                         if self.templates[t].name == name and self.templates[t].language == code), None)
        if template is None or template.status in {"PENDING", "REJECTED"}:
            raise SimulatorError(
                404, 132001, "Template name does not exist in the translation",
                details=f"template name ({name}) does not exist in {code}")
        if template.status == "PAUSED":
            raise SimulatorError(400, 132015, "Template is paused",
                                 details=f"template ({name}) is paused because of low quality")
        if template.status == "DISABLED":
            raise SimulatorError(400, 132016, "Template is disabled",
                                 details=f"template ({name}) has been paused too many times and is disabled")
        for kind in ("HEADER", "BODY"):
            expected = template.placeholder_count(kind)
            given = _parameter_count(body.get("components"), kind.lower())
            if given != expected:
                raise SimulatorError(
                    400, 132000, "Number of parameters does not match the expected number of params",
                    details=f"{kind.lower()}: number of localizable_params ({given}) does not match the "
                            f"expected number of params ({expected})")

    def delete_template(self, token: str | None, waba_id: str, name: str, hsm_id: str | None = None) -> int:
        """DELETE /{waba_id}/message_templates?name=: every language of the name (or just `hsm_id`)."""
        waba = self.waba_for(token, waba_id, method="delete")
        with self._lock:
            doomed = [t for t in waba.template_ids if self.templates[t].name == name
                      and (hsm_id is None or t == hsm_id)]
            if not doomed:
                raise SimulatorError(400, 100, f"(#100) Message template \"{name}\" not found",
                                     error_subcode=2593002)
            for template_id in doomed:
                waba.template_ids.remove(template_id)
                del self.templates[template_id]
            return len(doomed)

    def create_template(self, token: str | None, waba_id: str, body: Any) -> Template:
        """POST /{waba_id}/message_templates: validate like Meta, store as PENDING."""
        waba = self.waba_for(token, waba_id, method="post")
        if not isinstance(body, dict):
            raise invalid_parameter("Request body must be a JSON object")
        name = body.get("name")
        if not isinstance(name, str) or not _TEMPLATE_NAME_RE.match(name):
            raise invalid_parameter("Param name must contain only lowercase characters, numbers and "
                                    "underscores (max 512).")
        category = body.get("category")
        if category not in TEMPLATE_CATEGORIES:
            raise invalid_parameter("Param category must be one of {MARKETING, UTILITY, AUTHENTICATION}.")
        language = body.get("language")
        if not isinstance(language, str) or not _LANGUAGE_RE.match(language):
            raise invalid_parameter("Param language must be a language code such as en_US.")
        components = body.get("components")
        if not isinstance(components, list) or not all(isinstance(c, dict) for c in components):
            raise invalid_parameter("Param components must be an array of objects.")
        _validate_components(components)
        with self._lock:
            for template_id in waba.template_ids:
                existing = self.templates[template_id]
                if existing.name == name and existing.language == language:
                    raise invalid_parameter(
                        f"Message template \"{name}\" already exists in language {language}.")
            template = Template(id=self.new_id(), waba_id=waba_id, name=name, language=language,
                                category=category, components=components)
            self.templates[template.id] = template
            waba.template_ids.append(template.id)
            return template

    def list_templates(self, token: str | None, waba_id: str) -> list[Template]:
        waba = self.waba_for(token, waba_id)
        return [self.templates[i] for i in waba.template_ids]

    def review_template(self, template_id: str, status: str, reason: str | None = None) -> Template:
        """Meta's review outcome (APPROVED / REJECTED / ...), as the control API or a test decides."""
        status = status.upper()
        if status not in TEMPLATE_REVIEW_STATUSES:
            raise ValueError(f"unknown template status {status}")
        with self._lock:
            template = self.templates[template_id]
            template.status = status
            template.rejected_reason = (reason or "INVALID_FORMAT") if status == "REJECTED" else "NONE"
            return template


class InjectedDelay(Exception):
    """The message was accepted; the answer is to be given after `delay_s` (a slow Meta)."""

    def __init__(self, delay_s: float, response: dict[str, Any], sent: SentMessage) -> None:
        super().__init__(f"answer after {delay_s}s")
        self.delay_s = delay_s
        self.response = response
        self.sent = sent


def _parameter_count(components: Any, kind: str) -> int:
    if not isinstance(components, list):
        return 0
    for component in components:
        if isinstance(component, dict) and str(component.get("type", "")).lower() == kind:
            parameters = component.get("parameters")
            return len(parameters) if isinstance(parameters, list) else 0
    return 0


def _validate_message_body(msg_type: str, body: dict[str, Any]) -> None:
    if msg_type == "text" and not (isinstance(body.get("body"), str) and body["body"]):
        raise invalid_parameter("The parameter text['body'] is required.")
    if msg_type in _MEDIA_TYPES and not (body.get("id") or body.get("link")):
        raise invalid_parameter(f"The parameter {msg_type} requires either id or link.")
    if msg_type == "reaction" and "message_id" not in body:
        raise invalid_parameter("The parameter reaction['message_id'] is required.")
    if msg_type == "location" and not ("latitude" in body and "longitude" in body):
        raise invalid_parameter("The parameter location requires latitude and longitude.")
    if msg_type == "interactive" and body.get("type") not in {
            "button", "list", "cta_url", "product", "product_list", "flow", "location_request_message"}:
        raise invalid_parameter("The parameter interactive['type'] is required and must be valid.")


def _validate_components(components: list[dict[str, Any]]) -> None:
    kinds = [str(c.get("type", "")).upper() for c in components]
    unknown = [k for k in kinds if k not in {"HEADER", "BODY", "FOOTER", "BUTTONS"}]
    if unknown:
        raise invalid_parameter(f"Invalid component type {unknown[0]!r}.")
    if kinds.count("BODY") != 1:
        raise invalid_parameter("Template must contain exactly one BODY component.")
    for kind in ("HEADER", "FOOTER", "BUTTONS"):
        if kinds.count(kind) > 1:
            raise invalid_parameter(f"Template may contain at most one {kind} component.")
    for component in components:
        kind = str(component.get("type", "")).upper()
        if kind in {"BODY", "FOOTER"} and not (isinstance(component.get("text"), str) and component["text"]):
            raise invalid_parameter(f"{kind} component requires non-empty text.")
        if kind == "HEADER":
            fmt = component.get("format", "TEXT")
            if fmt not in {"TEXT", "IMAGE", "VIDEO", "DOCUMENT", "LOCATION"}:
                raise invalid_parameter("HEADER format must be TEXT, IMAGE, VIDEO, DOCUMENT or LOCATION.")
            if fmt == "TEXT" and not (isinstance(component.get("text"), str) and component["text"]):
                raise invalid_parameter("HEADER component with format TEXT requires text.")


DEMO_WABA_ID = "102290129340398"


def seed_demo(state: SimulatorState, access_token: str | None = None, app_secret: str | None = None,
              callback_url: str | None = None, numbers: int = 3) -> dict[str, Any]:
    """A demo WABA with `numbers` phone numbers and Meta's stock `hello_world` template, approved.

    Returns what a client needs: waba_id, access_token, app_secret and the numbers.
    """
    token = access_token or "EAAsim" + secrets.token_urlsafe(32)
    secret = app_secret or secrets.token_hex(16)
    specs = [(str(106540352242922 + i), f"+1 555-010-{i:04d}", "Demo Contact Center") for i in range(numbers)]
    state.add_waba(DEMO_WABA_ID, "Demo Contact Center", token, secret, specs, callback_url=callback_url)
    template = state.create_template(token, DEMO_WABA_ID, {
        "name": "hello_world", "category": "UTILITY", "language": "en_US",
        "components": [
            {"type": "HEADER", "format": "TEXT", "text": "Hello World"},
            {"type": "BODY", "text": "Welcome and congratulations!! This message demonstrates your ability "
                                     "to send a WhatsApp message notification from the Cloud API."},
            {"type": "FOOTER", "text": "WhatsApp Business Platform sample message"},
        ],
    })
    state.review_template(template.id, "APPROVED")
    return {"waba_id": DEMO_WABA_ID, "access_token": token, "app_secret": secret,
            "numbers": [{"id": i, "display_phone_number": d, "verified_name": v} for i, d, v in specs],
            "templates": [template.to_json()]}
