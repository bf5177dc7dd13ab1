"""Message templates in the store: one row per (organization, WABA, name, language)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from config.messaging import placeholders
from store.tables import MessageTemplate
from store.types import storable, utcnow
from store.upsert import upsert

# Meta's review events that are statuses of their own; REINSTATED puts a paused template back in use.
_EVENT_STATUS = {"REINSTATED": "APPROVED"}


def component_text(components: Sequence[Any], kind: str) -> str | None:
    for component in components:
        if isinstance(component, dict) and str(component.get("type", "")).upper() == kind:
            text = component.get("text")
            return text if isinstance(text, str) else None
    return None


def counts(components: Sequence[Any]) -> tuple[int, int]:
    """(header placeholders, body placeholders) a send must fill."""
    header, body = component_text(components, "HEADER"), component_text(components, "BODY")
    return len(placeholders(header or "")), len(placeholders(body or ""))


async def apply_status_event(session: AsyncSession, org_ids: Iterable[int], waba_id: str, meta_template_id: str | None,
                             name: str | None, language: str | None, event: str, reason: str | None) -> int:
    """A `message_template_status_update`: set the language's status in every verified organization."""
    orgs = list(org_ids)
    if not orgs or not event:
        return 0
    # Webhook values are Meta's: cleaned so the store can compare and hold them.
    meta_template_id, name = storable(meta_template_id, 64), storable(name, 512)
    language, reason, event = storable(language, 32), storable(reason), storable(event) or ""
    match = []
    if meta_template_id:
        match.append(MessageTemplate.meta_template_id == meta_template_id)
    if name and language:
        match.append((MessageTemplate.name == name) & (MessageTemplate.language == language))
    if not match:
        return 0
    status = _EVENT_STATUS.get(event.upper(), event.upper())[:32]
    result = await session.execute(
        update(MessageTemplate)
        .where(MessageTemplate.waba_id == waba_id, MessageTemplate.org_id.in_(orgs), or_(*match))
        .values(status=status, reason=None if reason in (None, "NONE") else reason, updated_at=utcnow()))
    return int(getattr(result, "rowcount", 0) or 0)


async def sync_from_meta(session: AsyncSession, org_id: int, waba_id: str, templates: Sequence[dict[str, Any]]) -> None:
    """Make the organization's copy of the WABA's templates what Meta listed (added, updated, removed)."""
    now = utcnow()
    rows = []
    for template in templates:
        name, language = template.get("name"), template.get("language")
        if not isinstance(name, str) or not isinstance(language, str):
            continue
        listed = template.get("components")
        components: list[Any] = listed if isinstance(listed, list) else []
        header_params, body_params = counts(components)
        reason = template.get("rejected_reason")
        rows.append({
            "org_id": org_id, "waba_id": waba_id, "name": name[:512], "language": language[:32],
            "category": str(template.get("category") or "")[:32], "status": str(template.get("status") or "")[:32],
            "reason": None if reason in (None, "NONE") else str(reason),
            "meta_template_id": str(template.get("id") or "")[:64] or None, "components": components,
            "header_params": header_params, "body_params": body_params, "updated_at": now,
        })
    keep = {(r["name"], r["language"]) for r in rows}
    existing = (await session.execute(
        select(MessageTemplate.id, MessageTemplate.name, MessageTemplate.language)
        .where(MessageTemplate.org_id == org_id, MessageTemplate.waba_id == waba_id))).all()
    gone = [row_id for row_id, name, language in existing if (name, language) not in keep]
    if gone:
        await session.execute(delete(MessageTemplate).where(MessageTemplate.id.in_(gone)))
    # created_at is not given: a known template keeps it, a new one gets the column default.
    await upsert(session, MessageTemplate, rows, key=["org_id", "waba_id", "name", "language"])
