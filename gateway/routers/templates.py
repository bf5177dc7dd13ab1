"""WhatsApp message templates of a linked WABA: create (one submission per language), list, sync, delete."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Sequence

from fastapi import APIRouter, Response
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from config.messaging import TemplateCreate
from gateway.deps import ConfigSupervisor, RuntimeDep, SessionDep
from gateway.errors import ApiError, conflict, field_error, not_found
from gateway.paging import Page, Paging, encode_cursor
from gateway.routers.whatsapp import _get_account
from gateway.runtime import Runtime
from gateway.schemas import MetaErrorOut, TemplateLanguageOut, TemplateOut
from meta.graph_client import GraphAPIError
from store.tables import MessageTemplate
from store.templates_repo import component_text, counts, sync_from_meta

router = APIRouter(prefix="/v1/orgs/{org_id}/whatsapp/accounts/{waba_id}/templates", tags=["templates"])


def _meta_failure(error: GraphAPIError, field: tuple[str | int, ...]) -> ApiError:
    if error.code is None:
        return ApiError(502, f"Meta's Graph API could not be reached: {error.message}")
    return field_error(field, f"Meta refused: {error.message} (code {error.code})",
                       meta_error=MetaErrorOut.of(error).model_dump())


async def _templates_out(session: AsyncSession, org_id: int, waba_id: str,
                         names: Sequence[str] | None = None) -> list[TemplateOut]:
    query = select(MessageTemplate).where(MessageTemplate.org_id == org_id, MessageTemplate.waba_id == waba_id)
    if names is not None:
        query = query.where(MessageTemplate.name.in_(names))
    by_name: dict[str, list[MessageTemplate]] = defaultdict(list)
    for row in (await session.scalars(query.order_by(MessageTemplate.name, MessageTemplate.language))).all():
        by_name[row.name].append(row)
    out = []
    for template_name, rows in by_name.items():
        first = rows[0]
        header_params, body_params = counts(first.components)
        out.append(TemplateOut(
            name=template_name, waba_id=waba_id, category=first.category,
            header=component_text(first.components, "HEADER"), body=component_text(first.components, "BODY"),
            footer=component_text(first.components, "FOOTER"), body_parameters=body_params,
            header_parameters=header_params,
            languages=[TemplateLanguageOut(language=r.language, status=r.status, reason=r.reason,
                                           meta_template_id=r.meta_template_id, updated_at=r.updated_at)
                       for r in rows]))
    return out


async def _token(runtime: Runtime, session: AsyncSession, org_id: int, waba_id: str) -> str:
    account = await _get_account(session, org_id, waba_id)
    return runtime.secrets.decrypt(account.access_token_enc)


@router.post("", status_code=201, response_model=TemplateOut)
async def create_template(waba_id: str, body: TemplateCreate, ctx: ConfigSupervisor, runtime: RuntimeDep,
                          session: SessionDep) -> TemplateOut:
    """Submit a message template for Meta's review, once per language (each `PENDING`); validated as Meta
    validates; all languages or none. Supervisors with Contact Center.
    """
    token = await _token(runtime, session, ctx.org.id, waba_id)
    taken = (await session.scalars(select(MessageTemplate.language).where(
        MessageTemplate.org_id == ctx.org.id, MessageTemplate.waba_id == waba_id,
        MessageTemplate.name == body.name, MessageTemplate.language.in_(body.languages)))).all()
    if taken:
        raise conflict(f"template {body.name} already exists in {', '.join(sorted(taken))}")
    components = body.components()
    created: list[tuple[str, str]] = []
    for index, language in enumerate(body.languages):
        try:
            answer = await runtime.graph.create_template(waba_id, token, {
                "name": body.name, "category": body.category, "language": language, "components": components})
        except GraphAPIError as error:
            # All languages or none: withdraw what Meta already took, then report the refusal.
            for meta_id, _ in created:
                with contextlib.suppress(GraphAPIError):
                    await runtime.graph.delete_template(waba_id, token, body.name, hsm_id=meta_id)
            raise _meta_failure(error, ("body", "languages", index) if error.code == 100 else ("body",)) from error
        created.append((str(answer.get("id") or ""), str(answer.get("status") or "PENDING")))
    header_params, body_params = counts(components)
    for language, (meta_id, status) in zip(body.languages, created, strict=True):
        session.add(MessageTemplate(org_id=ctx.org.id, waba_id=waba_id, name=body.name, language=language,
                                    category=body.category, status=status, meta_template_id=meta_id or None,
                                    components=components, header_params=header_params, body_params=body_params))
    await session.commit()
    return (await _templates_out(session, ctx.org.id, waba_id, [body.name]))[0]


@router.get("", response_model=Page[TemplateOut])
async def list_templates(waba_id: str, ctx: ConfigSupervisor, session: SessionDep,
                         paging: Paging) -> Page[TemplateOut]:
    """By name (A to Z), each with all its languages."""
    await _get_account(session, ctx.org.id, waba_id)
    query = select(MessageTemplate.name).distinct().where(MessageTemplate.org_id == ctx.org.id,
                                                          MessageTemplate.waba_id == waba_id)
    after = paging.after([str])
    if after is not None:
        query = query.where(MessageTemplate.name > after[0])
    names = list((await session.scalars(query.order_by(MessageTemplate.name).limit(paging.limit + 1))).all())
    shown = await _templates_out(session, ctx.org.id, waba_id, names[: paging.limit])
    more = len(names) > paging.limit
    return Page[TemplateOut](items=shown, next_cursor=encode_cursor((names[paging.limit - 1],)) if more else None)


@router.post("/sync", response_model=list[TemplateOut])
async def sync_templates(waba_id: str, ctx: ConfigSupervisor, runtime: RuntimeDep,
                         session: SessionDep) -> list[TemplateOut]:
    """Read the account's templates from Meta (following paging): statuses updated, templates gone at Meta
    removed. Supervisors with Contact Center.
    """
    token = await _token(runtime, session, ctx.org.id, waba_id)
    try:
        templates = await runtime.graph.list_templates(waba_id, token)
    except GraphAPIError as error:
        if error.code is None:
            raise ApiError(502, f"Meta's Graph API could not be reached: {error.message}") from error
        raise ApiError(409, f"Meta refused the stored access token: {error.message} (code {error.code})",
                       extra={"meta_error": MetaErrorOut.of(error).model_dump()}) from error
    await sync_from_meta(session, ctx.org.id, waba_id, templates)
    await session.commit()
    return await _templates_out(session, ctx.org.id, waba_id)


@router.delete("/{name}", status_code=204)
async def delete_template(waba_id: str, name: str, ctx: ConfigSupervisor, runtime: RuntimeDep,
                          session: SessionDep) -> Response:
    """Delete the template in every language, at Meta and here. Supervisors with Contact Center."""
    token = await _token(runtime, session, ctx.org.id, waba_id)
    exists = await session.scalar(select(MessageTemplate.id).where(
        MessageTemplate.org_id == ctx.org.id, MessageTemplate.waba_id == waba_id, MessageTemplate.name == name))
    if exists is None:
        raise not_found("template")
    try:
        await runtime.graph.delete_template(waba_id, token, name)
    except GraphAPIError as error:
        # Already gone at Meta (deleted there): remove our copy too.
        if error.code != 100:
            raise _meta_failure(error, ("path", "name")) from error
    await session.execute(delete(MessageTemplate).where(
        MessageTemplate.org_id == ctx.org.id, MessageTemplate.waba_id == waba_id, MessageTemplate.name == name))
    await session.commit()
    return Response(status_code=204)
