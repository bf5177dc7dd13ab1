"""What Meta calls: the subscription handshake and signed event deliveries."""

from __future__ import annotations

import functools
import hmac
import json
import time
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway import metrics
from gateway.deps import OrgId, RuntimeDep, SessionDep
from gateway.errors import ApiError
from gateway.schemas import WebhookAck
from gateway.signing_cache import Loader, SigningSecret
from meta import signature
from meta.unicode_safe import clean_json, may_hold_surrogates
from meta.webhook_parser import WebhookPayloadError, parse_webhook
from store.crypto import SecretBox
from store.db import Database
from store.tables import Organization, WhatsAppAccount
from store.types import utcnow

router = APIRouter(prefix="/webhooks/whatsapp", tags=["meta webhook"])


@router.get("/{org_id}", response_class=PlainTextResponse)
async def verify_subscription(
    org_id: OrgId,
    session: SessionDep,
    mode: Annotated[str | None, Query(alias="hub.mode")] = None,
    verify_token: Annotated[str | None, Query(alias="hub.verify_token")] = None,
    challenge: Annotated[str | None, Query(alias="hub.challenge")] = None,
) -> PlainTextResponse:
    """Meta's webhook handshake: answers `hub.challenge` as text/plain when `hub.verify_token` matches the
    organization's verify token.
    """
    org = await session.get(Organization, org_id)
    # An unknown organization fails like a wrong token: the public endpoint reveals no ids.
    if org is None or mode != "subscribe" or verify_token is None or challenge is None or not hmac.compare_digest(
        verify_token.encode(), org.webhook_verify_token.encode()
    ):
        raise ApiError(403, "verification failed")
    return PlainTextResponse(challenge)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> object:
    # NaN/Infinity are not JSON (RFC 8259), and PostgreSQL refuses them in a json column: a 500 later.
    raise ValueError(f"{name} is not a valid JSON value")


def _waba_ids(payload: object) -> list[str]:
    """The WABA ids a delivery names (entry[].id): they pick the app secret to check against."""
    entries = payload.get("entry") if isinstance(payload, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ApiError(400, "entry: a non-empty list is required")
    ids: list[str] = []
    for index, entry in enumerate(entries):
        waba_id = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(waba_id, str | int) or isinstance(waba_id, bool) or str(waba_id) == "":
            raise ApiError(400, f"entry[{index}].id: the WhatsApp Business Account id is required")
        if str(waba_id) not in ids:
            ids.append(str(waba_id))
    return ids


# Built once (every cache miss runs it): a statement object keeps its cache key. Plain columns, no ORM objects.
_SHARING_A_WABA = select(
    WhatsAppAccount.org_id, WhatsAppAccount.waba_id, WhatsAppAccount.app_secret_enc,
    WhatsAppAccount.previous_app_secret_enc, WhatsAppAccount.previous_app_secret_until,
).where(WhatsAppAccount.waba_id.in_(select(WhatsAppAccount.waba_id).where(
    WhatsAppAccount.org_id == bindparam("org_id"))))


def signing_secrets_loader(db: Database, secrets: SecretBox) -> Loader:
    """What the signing cache reads on a miss: every organization's link of the WABAs `org_id` links.

    Only these can verify a delivery to this organization: each WABA it names must be linked here
    (none: an unknown organization, or one with no WABA).
    """

    async def accounts(session: AsyncSession, org_id: int) -> list[tuple[int, str, str]]:
        now = utcnow()
        found = []
        for org, waba, secret, previous, until in (await session.execute(_SHARING_A_WABA, {"org_id": org_id})).all():
            found.append((org, waba, secret))
            if previous is not None and until is not None and until > now:  # a rotation's grace period
                found.append((org, waba, previous))
        return found

    async def load(org_id: int) -> list[SigningSecret]:
        # A read step of its own (not a request-long session): its connection is back before the grouped write.
        rows = await db.read(functools.partial(accounts, org_id=org_id))
        return [SigningSecret(org_id=o, waba_id=w, app_secret=secrets.decrypt(s)) for o, w, s in rows]

    return load


def _verifying_orgs(accounts: list[SigningSecret], body: bytes, header: str,
                    waba_ids: list[str]) -> dict[str, set[int]]:
    """For each WABA, the organizations linking it whose stored app secret verifies the signature.

    One WABA may be linked to several organizations while Meta calls one callback per app: a
    delivery may concern another linked organization's number, and may go there only if it is
    signed with the secret *that* organization stored.
    """
    verified: dict[str, set[int]] = {waba_id: set() for waba_id in waba_ids}
    for account in accounts:
        if account.waba_id in verified and signature.verify(body, header, account.app_secret):
            verified[account.waba_id].add(account.org_id)
    return verified


def _signature_mismatch() -> ApiError:
    # One answer for a wrong signature, an unknown organization and one with no WABA: the public
    # endpoint does not tell which organizations exist.
    return ApiError(403, "signature does not match")


@router.post("/{org_id}", response_model=WebhookAck)
async def receive_delivery(org_id: OrgId, request: Request, runtime: RuntimeDep) -> WebhookAck:
    """Meta's signed webhook delivery (`X-Hub-Signature-256`, HMAC-SHA256 with the app secret): messages,
    statuses and template updates are stored (idempotently on the wamid) before the 200, then routed. Missing
    signature 401, wrong 403, over the size limit 413, malformed JSON 400.
    """
    started = time.perf_counter()
    counted = metrics.of(request)
    body = await _read_body(request, runtime.settings.max_webhook_body_bytes)
    header = request.headers.get(signature.HEADER)
    if not header:
        if counted is not None:
            counted.signature_failures.labels("missing").inc()
        raise ApiError(401, f"missing {signature.HEADER} header")
    accounts = await runtime.signing.secrets_for(org_id)
    # The signature first, over the raw body: nothing is parsed for a caller who cannot sign.
    if not any(a.org_id == org_id and signature.verify(body, header, a.app_secret) for a in accounts):
        if counted is not None:
            counted.signature_failures.labels("mismatch").inc()
        raise _signature_mismatch()
    try:
        payload = json.loads(body, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # absurdly deep nesting: json gives up, which must not be a 500
        raise ApiError(400, "body is not valid JSON: nested too deeply") from exc
    if may_hold_surrogates(body):
        payload = clean_json(payload)  # signed and accepted: stored, with unencodable code points replaced
    waba_ids = _waba_ids(payload)
    verified = _verifying_orgs(accounts, body, header, waba_ids)
    for waba_id in waba_ids:
        # A WABA of the delivery this organization does not link (or signed with another secret).
        if org_id not in verified[waba_id]:
            if counted is not None:
                counted.signature_failures.labels("mismatch").inc()
            raise _signature_mismatch()
    try:
        parsed = parse_webhook(payload)
    except WebhookPayloadError as exc:
        raise ApiError(400, f"{exc.field}: {exc.message}") from exc
    result = await runtime.intake.store(org_id, parsed, verified)
    if counted is not None:
        counted.messages.inc(result.new_message_count)
        counted.duplicates.inc(result.duplicate_messages)
        counted.intake_seconds.observe(time.perf_counter() - started)
    # Durable now; routing happens after the answer, and is recovered from the store if interrupted.
    for owner_org, messages in result.new_messages.items():
        runtime.routing.submit_messages(owner_org, messages)
    # Each status, and each follow-up of a conversation an agent holds, is on its agent's stream from the same commit:
    # the agent is told them, as stored.
    agents = result.agents_shown | {(change.org_id, change.agent_id) for change in result.status_changes
                                    if change.agent_id is not None}
    for org_id_of_agent, agent_id in sorted(agents):
        runtime.routing.tell_to_read(org_id_of_agent, agent_id, result.told.get(agent_id))
    return WebhookAck(messages=result.new_message_count, duplicate_messages=result.duplicate_messages,
                      statuses=result.statuses, other_changes=result.other_changes)
