"""WhatsApp configuration: Meta webhook endpoint, linked business accounts (WABAs) and their numbers."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Response
from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from actors.directory import ActorUnavailable
from config.messaging import NumberSettings
from config.models import WhatsAppAccountLink, WhatsAppCredentials
from gateway.deps import ConfigSupervisor, RuntimeDep, SessionDep
from gateway.errors import ApiError, conflict, field_error, forbidden, not_found
from gateway.paging import Page, Paging
from gateway.runtime import Runtime
from gateway.schemas import MetaErrorOut, PhoneNumberOut, WebhookEndpointOut, WhatsAppAccountOut
from gateway.security import new_verify_token
from meta.graph_client import GraphAPIError
from store.tables import Inbox, PhoneNumber, WhatsAppAccount
from store.types import utcnow
from store.upsert import upsert

router = APIRouter(prefix="/v1/orgs/{org_id}/whatsapp", tags=["whatsapp"])

# Meta's codes for "the token is not valid" (190, and 102 for an expired session).
_TOKEN_ERROR_CODES = {102, 190}


def _endpoint(runtime: Runtime, org_id: int, verify_token: str) -> WebhookEndpointOut:
    path = f"/webhooks/whatsapp/{org_id}"
    return WebhookEndpointOut(callback_path=path, callback_url=runtime.settings.callback_base_url + path,
                              verify_token=verify_token)


@router.get("/webhook", response_model=WebhookEndpointOut)
async def get_webhook_endpoint(ctx: ConfigSupervisor, runtime: RuntimeDep) -> WebhookEndpointOut:
    """The callback URL and verify token to enter in Meta's app dashboard. Supervisors with Contact Center."""
    return _endpoint(runtime, ctx.org.id, ctx.org.webhook_verify_token)


@router.post("/webhook/rotate", response_model=WebhookEndpointOut)
async def rotate_verify_token(ctx: ConfigSupervisor, runtime: RuntimeDep, session: SessionDep) -> WebhookEndpointOut:
    """Issue a new webhook verify token (enter it in Meta's app dashboard). Supervisors with Contact Center."""
    org = ctx.org
    org.webhook_verify_token = new_verify_token()
    session.add(org)
    await session.commit()
    return _endpoint(runtime, org.id, org.webhook_verify_token)


async def _read_from_meta(runtime: Runtime, waba_id: str, access_token: str, *,
                          stored: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The WABA and all its numbers from the Graph API.

    Meta's refusal of what the caller sent is a 422 naming the field; a refusal of the token we
    stored earlier (revoked, expired) is a 409: the link must be renewed, the request was fine.
    """
    try:
        waba = await runtime.graph.get_waba(waba_id, access_token)
        numbers = await runtime.graph.list_phone_numbers(waba_id, access_token)
    except GraphAPIError as error:
        if error.code is None:
            raise ApiError(502, f"Meta's Graph API could not be reached: {error.message}") from error
        meta_error = MetaErrorOut.of(error).model_dump()
        if stored:
            raise ApiError(409, f"Meta refused the stored access token: {error.message} (code {error.code}); "
                                "unlink and link the account again with a valid token",
                           extra={"meta_error": meta_error}) from error
        field = "access_token" if error.code in _TOKEN_ERROR_CODES else "waba_id"
        raise field_error(("body", field), f"Meta refused: {error.message} (code {error.code})",
                          meta_error=meta_error) from error
    return waba, numbers


async def _store_numbers(session: AsyncSession, waba_id: str, numbers: Sequence[dict[str, Any]]) -> None:
    rows = [
        {
            "phone_number_id": str(n["id"]),
            "waba_id": waba_id,
            "display_phone_number": n.get("display_phone_number"),
            "verified_name": n.get("verified_name"),
            "quality_rating": n.get("quality_rating"),
            "updated_at": utcnow(),
        }
        for n in numbers
        if n.get("id")
    ]
    await upsert(session, PhoneNumber, rows, key=["phone_number_id"])


async def numbers_of_org(session: AsyncSession, org_id: int, waba_ids: Sequence[str] | None = None, *,
                         after: tuple[str, str] | None = None, limit: int | None = None) -> list[PhoneNumberOut]:
    """Numbers of the WABAs linked to the org, with availability across every organization.

    By WABA id, then phone number id: a stable order that `after` (a keyset position) pages on.
    """
    query = (
        select(PhoneNumber, Inbox.id, Inbox.org_id)
        .join(WhatsAppAccount, WhatsAppAccount.waba_id == PhoneNumber.waba_id)
        .outerjoin(Inbox, Inbox.phone_number_id == PhoneNumber.phone_number_id)
        .where(WhatsAppAccount.org_id == org_id)
        .order_by(PhoneNumber.waba_id, PhoneNumber.phone_number_id)
    )
    if waba_ids is not None:
        query = query.where(PhoneNumber.waba_id.in_(waba_ids))
    if after is not None:
        query = query.where(or_(PhoneNumber.waba_id > after[0],
                                and_(PhoneNumber.waba_id == after[0], PhoneNumber.phone_number_id > after[1])))
    if limit is not None:
        query = query.limit(limit)
    return [
        PhoneNumberOut(
            phone_number_id=number.phone_number_id,
            waba_id=number.waba_id,
            display_phone_number=number.display_phone_number,
            verified_name=number.verified_name,
            quality_rating=number.quality_rating,
            messages_per_second=number.messages_per_second,
            available=inbox_id is None,
            inbox_id=inbox_id if inbox_org == org_id else None,
        )
        for number, inbox_id, inbox_org in (await session.execute(query)).all()
    ]


async def _account_out(session: AsyncSession, account: WhatsAppAccount) -> WhatsAppAccountOut:
    return WhatsAppAccountOut(
        waba_id=account.waba_id, name=account.name, linked_at=account.linked_at,
        refreshed_at=account.refreshed_at,
        phone_numbers=await numbers_of_org(session, account.org_id, [account.waba_id]),
    )


async def _get_account(session: AsyncSession, org_id: int, waba_id: str) -> WhatsAppAccount:
    account = await session.scalar(
        select(WhatsAppAccount).where(WhatsAppAccount.org_id == org_id, WhatsAppAccount.waba_id == waba_id)
    )
    if account is None:
        raise not_found("WhatsApp account")
    return account


@router.post("/accounts", status_code=201, response_model=WhatsAppAccountOut)
async def link_account(body: WhatsAppAccountLink, ctx: ConfigSupervisor, runtime: RuntimeDep,
                       session: SessionDep) -> WhatsAppAccountOut:
    """Link a WABA: the access token is verified with Meta's Graph API and every phone number read (Meta's
    refusal is a 422 with Meta's code and message; nothing is stored). Secrets are stored encrypted and never
    returned. Supervisors with Contact Center.
    """
    already = await session.scalar(select(WhatsAppAccount.id).where(
        WhatsAppAccount.org_id == ctx.org.id, WhatsAppAccount.waba_id == body.waba_id))
    if already is not None:
        raise conflict(f"WABA {body.waba_id} is already linked to this organization")
    # Nothing is stored unless Meta confirms the token and the WABA.
    waba, numbers = await _read_from_meta(runtime, body.waba_id, body.access_token)
    account = WhatsAppAccount(
        org_id=ctx.org.id, waba_id=body.waba_id, name=waba.get("name"),
        access_token_enc=runtime.secrets.encrypt(body.access_token),
        app_secret_enc=runtime.secrets.encrypt(body.app_secret),
    )
    session.add(account)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise conflict(f"WABA {body.waba_id} is already linked to this organization") from exc
    await _store_numbers(session, body.waba_id, numbers)
    await session.commit()
    runtime.signing.invalidate()  # the new secret verifies deliveries from now on, here at once
    return await _account_out(session, account)


@router.put("/accounts/{waba_id}/credentials", response_model=WhatsAppAccountOut)
async def rotate_credentials(waba_id: str, body: WhatsAppCredentials, ctx: ConfigSupervisor, runtime: RuntimeDep,
                             session: SessionDep) -> WhatsAppAccountOut:
    """New access token and app secret for a linked WABA (Meta rotated them).

    The token is verified against the Graph API first (refused: 422 naming `access_token`, nothing
    changes). The replaced app secret still verifies deliveries for `WA_ROUTER_APP_SECRET_GRACE_S`
    (Meta retries deliveries signed before the change); senders use the new token from their next send.
    """
    account = await _get_account(session, ctx.org.id, waba_id)
    waba, numbers = await _read_from_meta(runtime, waba_id, body.access_token)
    current_secret = runtime.secrets.decrypt(account.app_secret_enc)
    if body.app_secret != current_secret:
        account.previous_app_secret_enc = account.app_secret_enc
        account.previous_app_secret_until = utcnow() + timedelta(seconds=runtime.settings.app_secret_grace_s)
        account.app_secret_enc = runtime.secrets.encrypt(body.app_secret)
    account.access_token_enc = runtime.secrets.encrypt(body.access_token)
    account.name = waba.get("name") or account.name
    account.refreshed_at = utcnow()
    await _store_numbers(session, waba_id, numbers)
    in_use = list((await session.scalars(
        select(Inbox.phone_number_id).join(PhoneNumber, PhoneNumber.phone_number_id == Inbox.phone_number_id)
        .where(Inbox.org_id == ctx.org.id, PhoneNumber.waba_id == waba_id)
    )).all())
    await session.commit()
    runtime.signing.invalidate()  # the new secret verifies deliveries here at once
    for phone_number_id in in_use:
        # Their senders read the new token on their next send (an unavailable one reads it when it starts).
        with contextlib.suppress(ActorUnavailable):
            await runtime.routing.sender(phone_number_id).forget_tokens()
    return await _account_out(session, account)


@router.get("/accounts", response_model=Page[WhatsAppAccountOut])
async def list_accounts(ctx: ConfigSupervisor, session: SessionDep, paging: Paging) -> Page[WhatsAppAccountOut]:
    """In the order they were linked."""
    query = select(WhatsAppAccount).where(WhatsAppAccount.org_id == ctx.org.id)
    accounts = (await session.scalars(paging.oldest_first(query, WhatsAppAccount.id))).all()
    shown = {a.id: await _account_out(session, a) for a in accounts[: paging.limit]}
    return paging.page(accounts, lambda a: (a.id,), lambda a: shown[a.id])


@router.get("/accounts/{waba_id}", response_model=WhatsAppAccountOut)
async def get_account(waba_id: str, ctx: ConfigSupervisor, session: SessionDep) -> WhatsAppAccountOut:
    """One linked account with its numbers (never its secrets). Supervisors with Contact Center."""
    return await _account_out(session, await _get_account(session, ctx.org.id, waba_id))


@router.post("/accounts/{waba_id}/refresh", response_model=WhatsAppAccountOut)
async def refresh_account(waba_id: str, ctx: ConfigSupervisor, runtime: RuntimeDep,
                          session: SessionDep) -> WhatsAppAccountOut:
    """Read the account's phone numbers from Meta again. Supervisors with Contact Center."""
    account = await _get_account(session, ctx.org.id, waba_id)
    waba, numbers = await _read_from_meta(runtime, waba_id, runtime.secrets.decrypt(account.access_token_enc),
                                          stored=True)
    account.name = waba.get("name") or account.name
    account.refreshed_at = utcnow()
    await _store_numbers(session, waba_id, numbers)
    await session.commit()
    return await _account_out(session, account)


@router.delete("/accounts/{waba_id}", status_code=204)
async def unlink_account(waba_id: str, ctx: ConfigSupervisor, runtime: RuntimeDep, session: SessionDep) -> Response:
    """Unlink the account (its secrets are deleted). Supervisors with Contact Center."""
    account = await _get_account(session, ctx.org.id, waba_id)
    in_use = (await session.scalars(
        select(Inbox.name).join(PhoneNumber, PhoneNumber.phone_number_id == Inbox.phone_number_id)
        .where(Inbox.org_id == ctx.org.id, PhoneNumber.waba_id == waba_id)
    )).all()
    if in_use:
        raise conflict(f"numbers of WABA {waba_id} are used by inbox(es) {', '.join(in_use)}; delete them first")
    await session.delete(account)
    await session.commit()
    runtime.signing.invalidate()  # its secret verifies nothing any more, here at once
    return Response(status_code=204)


@router.get("/numbers", response_model=Page[PhoneNumberOut])
async def list_numbers(ctx: ConfigSupervisor, session: SessionDep, paging: Paging) -> Page[PhoneNumberOut]:
    """By WABA id, then phone number id."""
    after = paging.after([str, str])
    numbers = await numbers_of_org(session, ctx.org.id, after=(after[0], after[1]) if after else None,
                                   limit=paging.limit + 1)
    return paging.page(numbers, lambda n: (n.waba_id, n.phone_number_id), lambda n: n)


@router.patch("/numbers/{phone_number_id}", response_model=PhoneNumberOut)
async def update_number(phone_number_id: str, body: NumberSettings, ctx: ConfigSupervisor, runtime: RuntimeDep,
                        session: SessionDep) -> PhoneNumberOut:
    """Per-number outbound throughput (Meta's default 80/s; up to 1,000/s when Meta raised the number's)."""
    number = next((n for n in await numbers_of_org(session, ctx.org.id) if n.phone_number_id == phone_number_id),
                  None)
    if number is None:
        raise not_found("phone number")
    if not number.available and number.inbox_id is None:
        # A WABA may be linked to several organizations; a number's settings belong to the one whose
        # inbox uses it (another could otherwise throttle that organization's sending).
        raise forbidden("the number is used by an inbox of another organization; only that organization "
                        "may change its settings")
    row = await session.get(PhoneNumber, phone_number_id)
    assert row is not None
    row.messages_per_second = body.messages_per_second
    await session.commit()
    # An unavailable sender reads the setting from the store when it activates again.
    with contextlib.suppress(ActorUnavailable):
        await runtime.routing.sender(phone_number_id).set_rate(float(body.messages_per_second))
    return number.model_copy(update={"messages_per_second": body.messages_per_second})
