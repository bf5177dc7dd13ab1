"""Durable, idempotent storage of one parsed webhook delivery (before Meta gets its 200)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from sqlalchemy import bindparam, select, text
from sqlalchemy import update as sql_update
from sqlalchemy.ext.asyncio import AsyncSession

from actors.messages import StoredMessage
from meta.webhook_parser import InboundMessage as ParsedMessage
from meta.webhook_parser import ParsedWebhook
from store.agent_store_steps import Told
from store.agent_streams import StreamEvent, message_shown, split_told
from store.conversation_openings import opening_facts
from store.core_connection import core_connection
from store.customers import (
    CustomerRef,
    Identity,
    identifier_lock_keys,
    lock_identifiers,
    new_anonymous_customer,
    resolve_customers,
)
from store.outbox import StatusChange, apply_status
from store.routing_repo import append_in_transaction, attach_to_assigned, forwarded_payload
from store.tables import Base, Customer, InboundMessage, Inbox, MessageStatus, WebhookChange
from store.templates_repo import apply_status_event
from store.upsert import insert_ignoring_duplicates

FOREIGN_SIGNATURE_FLAG = ("the number belongs to an inbox of organization {owner}, but the delivery's signature "
                          "does not verify with the app secret that organization stored for WABA {waba}")


@dataclass
class IntakeResult:
    # Messages to route, per organization owning the number's inbox (the receiving one or another).
    new_messages: dict[int, list[StoredMessage]] = field(default_factory=dict)
    status_changes: list[StatusChange] = field(default_factory=list)
    # Each agent's events the commit appended to its stream (follow-ups shown, reply statuses), as stored: what the
    # agent is told.
    told: Told = field(default_factory=dict)
    # (organization, agent) to tell of the follow-ups the commit showed them that their inboxes need not hear of
    # (not in `new_messages`).
    agents_shown: set[tuple[int, int]] = field(default_factory=set)
    new_message_count: int = 0
    duplicate_messages: int = 0
    statuses: int = 0
    other_changes: int = 0


def _for_agents_only(new_messages: dict[int, list[StoredMessage]], changed_customers: set[int]
                     ) -> tuple[dict[int, list[StoredMessage]], set[tuple[int, int]]]:
    """(The messages for their inboxes, the (organization, agent) to tell instead of them.)

    A follow-up shown on its agent's stream at intake needs no step of its inbox: the agent is told it directly (one
    actor call instead of two). One whose customer's identity this delivery changed still goes through the inbox,
    whose conversation then shows the newest identity (and tells the agent)."""
    agents: set[tuple[int, int]] = set()
    kept: dict[int, list[StoredMessage]] = {}
    for org, messages in new_messages.items():
        for message in messages:
            if message.shown_as is not None and message.customer_id not in changed_customers:
                agents.add((org, message.shown_as[0]))
            else:
                kept.setdefault(org, []).append(message)
    return kept, agents


_INBOXES_OF_NUMBERS = select(Inbox.id, Inbox.phone_number_id, Inbox.org_id).where(
    Inbox.phone_number_id.in_(bindparam("numbers", expanding=True)))


def _fit_row(model: type[Base], row: dict[str, Any], keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """The row with every string made storable: Meta's fields have no documented maximum, and what was
    signed and accepted must be stored, yet PostgreSQL refuses over-long VARCHARs and NUL characters.
    Key columns (idempotency) stay distinct: when cut, they keep a hash of the whole value."""
    columns = model.__table__.c  # type: ignore[attr-defined]
    fitted = dict(row)
    for name, value in row.items():
        if not isinstance(value, str):
            continue
        length = getattr(columns[name].type, "length", None)
        clean = value.replace("\x00", "")
        if name in keys and (clean != value or (length is not None and len(value) > length)):
            digest = "~" + hashlib.sha256(value.encode()).hexdigest()[:16]
            clean = clean[: (length or len(clean) + len(digest)) - len(digest)] + digest
        elif length is not None:
            clean = clean[:length]
        fitted[name] = clean
    return fitted


def _as_shown(message: StoredMessage) -> dict[str, Any]:
    """A follow-up as its agent's stream shows it: what its inbox would hand the agent from the forward."""
    payload = forwarded_payload({f.name: getattr(message, f.name) for f in fields(message)})  # asdict: a deep copy
    assert payload is not None  # a StoredMessage has every forwarded field
    return payload


def _dedupe_key(waba_id: str, field_name: str, value: Any) -> str:
    canonical = json.dumps([waba_id, field_name, value], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _identity(message: ParsedMessage) -> Identity:
    """Who sent the message; for an identity-change system message, the previous and the new identifiers."""
    wa_id, user_id = message.from_wa_id or None, message.from_user_id
    previous_wa_id = previous_user_id = None
    change = message.identity_change
    if change is not None:
        if change.new_wa_id and change.new_wa_id != wa_id:
            previous_wa_id, wa_id = wa_id, change.new_wa_id
        if change.new_user_id and change.new_user_id != user_id:
            previous_user_id, user_id = user_id, change.new_user_id
        previous_user_id = change.previous_user_id or previous_user_id
    # Identifiers are keys: made storable like every other column, cut ones stay distinct (hashed).
    current = _fit_row(Customer, {"user_id": user_id, "wa_id": wa_id, "username": message.username,
                                  "name": message.customer_name}, keys=("user_id", "wa_id"))
    previous = _fit_row(Customer, {"user_id": previous_user_id, "wa_id": previous_wa_id}, keys=("user_id", "wa_id"))
    return Identity(user_id=current["user_id"], wa_id=current["wa_id"], username=current["username"],
                    name=current["name"], previous_user_id=previous["user_id"], previous_wa_id=previous["wa_id"])


Delivery = tuple[int, ParsedWebhook, dict[str, set[int]] | None]


@dataclass
class _Placed:
    """A delivery's messages (each once), where each belongs: (organization, inbox or None, flag or None), and per
    organization they go to (ascending) its messages with their senders' identities."""

    org_id: int
    parsed: ParsedWebhook
    verified: dict[str, set[int]]
    messages: list[ParsedMessage]
    placement: dict[str, tuple[int, int | None, str | None]]
    by_target: dict[int, list[tuple[ParsedMessage, Identity]]]


@dataclass
class _Staged:
    """A delivery written but for its events on agents' streams, which its group appends at the end."""

    result: IntakeResult
    on_streams: list[tuple[int, StreamEvent]]
    attached: bool
    changed_customers: set[int]


def _place(org_id: int, parsed: ParsedWebhook, verified: dict[str, set[int]],
           owner_of_number: dict[str, tuple[int, int]]) -> _Placed:
    """A number is used by at most one inbox anywhere: its owner decides where the message belongs (the receiving
    organization otherwise). A message for a number whose inbox belongs to another organization goes to that
    organization only when its stored app secret verified the delivery; otherwise it stays here, flagged, unrouted."""
    unique_messages: dict[str, ParsedMessage] = {}
    for message in parsed.messages:
        unique_messages.setdefault(message.wamid, message)  # the same message twice in one body: once
    placement: dict[str, tuple[int, int | None, str | None]] = {}
    for message in unique_messages.values():
        owner = owner_of_number.get(message.phone_number_id or "")
        if owner is None:
            placement[message.wamid] = (org_id, None, None)
        elif owner[1] == org_id or owner[1] in verified.get(message.waba_id, set()):
            placement[message.wamid] = (owner[1], owner[0], None)
        else:
            placement[message.wamid] = (org_id, None, FOREIGN_SIGNATURE_FLAG.format(owner=owner[1],
                                                                                    waba=message.waba_id))
    by_target: dict[int, list[tuple[ParsedMessage, Identity]]] = {}
    for message in unique_messages.values():
        by_target.setdefault(placement[message.wamid][0], []).append((message, _identity(message)))
    return _Placed(org_id, parsed, verified, list(unique_messages.values()), placement, dict(sorted(by_target.items())))


async def store_delivery(session: AsyncSession, org_id: int, parsed: ParsedWebhook,
                         verified: dict[str, set[int]] | None = None) -> IntakeResult:
    """Write everything in the delivery; redelivered items are skipped by unique constraints.

    `verified` maps each WABA of the delivery to the organizations whose stored app secret verifies
    its signature (the receiving one always). A message for a number whose inbox belongs to another
    organization goes to that organization (and its customers) only when it is among them;
    otherwise it stays here, flagged, unrouted.
    """
    return (await store_deliveries(session, [(org_id, parsed, verified)]))[0]


async def store_deliveries(session: AsyncSession, deliveries: Sequence[Delivery],
                           lock_timeout_ms: int | None = None) -> list[IntakeResult]:
    """`store_delivery` for several deliveries in the session's one transaction, each answered as if stored alone,
    one after another (a redelivery later in the list is a duplicate).

    Locks are taken in the order every writer takes them, whatever the number of deliveries, so a group of
    deliveries on PostgreSQL cannot deadlock with another group or with an inbox's commit: first every customer
    identifier the group names (advisory locks, ascending, one statement), then each delivery's conversations
    (share locks, as `attach_to_assigned` takes them), and last the agents' streams, all of the group's at once
    (sorted, as every writer of a stream locks them). A stream lock taken by the first delivery and held while a
    later one waits for a conversation an inbox is closing (and will then lock the same stream) would be a cycle.

    `lock_timeout_ms` (PostgreSQL): once the identifiers are locked, the transaction waits at most this long for any
    other lock. (Waiting for the identifiers cannot close a cycle: a transaction waiting for them holds no row yet;
    another group holding them may rightly take longer.)
    """
    numbers = {m.phone_number_id for _, parsed, _ in deliveries for m in parsed.messages if m.phone_number_id}
    owner_of_number: dict[str, tuple[int, int]] = {}
    if numbers:
        owner_of_number = {number: (inbox_id, owner) for inbox_id, number, owner in (await (
            await core_connection(session)).execute(_INBOXES_OF_NUMBERS, {"numbers": sorted(numbers)})).all()}
    placed = [_place(org_id, parsed, verified or {}, owner_of_number) for org_id, parsed, verified in deliveries]
    keys = {key for delivery in placed for target, batch in delivery.by_target.items()
            for key in identifier_lock_keys(target, [identity for _, identity in batch])}
    if keys:
        await lock_identifiers(session, keys)
    if lock_timeout_ms is not None and session.get_bind().dialect.name == "postgresql":
        await session.execute(text(f"SET LOCAL lock_timeout = '{int(lock_timeout_ms)}ms'"))
    staged = [await _stage(session, delivery) for delivery in placed]
    told = await append_in_transaction(session, [event for delivery in staged for event in delivery.on_streams])
    parts = split_told(told, [[event for _, event in delivery.on_streams] for delivery in staged])
    return [_finish(delivery, part) for delivery, part in zip(staged, parts, strict=True)]


async def _stage(session: AsyncSession, delivery: _Placed) -> _Staged:
    """Everything in the delivery but its events on agents' streams (the group's identifier locks already held)."""
    result = IntakeResult()
    org_id, parsed, verified, placement = delivery.org_id, delivery.parsed, delivery.verified, delivery.placement
    # Customers belong to an organization: resolved in the organization each message goes to.
    # Same database transaction as the messages: a delivery is stored with its customers or not at all.
    customer_of_wamid: dict[str, CustomerRef | None] = {}
    changed_customers: set[int] = set()  # whose identity this delivery wrote
    for target, batch in delivery.by_target.items():
        resolved = await resolve_customers(session, target, [identity for _, identity in batch],
                                           changed=changed_customers, locked=True)
        customer_of_wamid.update({m.wamid: c for (m, _), c in zip(batch, resolved, strict=True)})
    customer_of: dict[tuple[int, str], CustomerRef | None] = {}
    rows = []
    for message in delivery.messages:
        target_org, inbox_id, flag = placement[message.wamid]
        customer = customer_of_wamid[message.wamid]
        row = _fit_row(InboundMessage, {
            "org_id": target_org, "wamid": message.wamid, "waba_id": message.waba_id,
            "phone_number_id": message.phone_number_id, "inbox_id": inbox_id,
            "from_wa_id": message.from_wa_id, "from_user_id": message.from_user_id,
            "customer_id": customer.id if customer else None, "customer_name": message.customer_name,
            "type": message.type, "summary": message.summary, "sent_at": message.timestamp,
            "raw": message.raw, "flag": flag,
        }, keys=("wamid",))
        customer_of[(target_org, row["wamid"])] = customer
        rows.append(row)
    inserted = await insert_ignoring_duplicates(
        session, InboundMessage, rows, conflict_on=["org_id", "wamid"], returning=["id", "org_id", "wamid"]
    )
    ids = {(row_org, wamid): row_id for row_id, row_org, wamid in inserted}
    result.new_message_count = len(ids)
    result.duplicate_messages = len(parsed.messages) - len(ids)
    for row in rows:
        row_id = ids.get((row["org_id"], row["wamid"]))
        if row_id is None or row["inbox_id"] is None:
            continue
        customer = customer_of[(row["org_id"], row["wamid"])]
        if customer is None:
            # No number and no BSUID: a conversation of its own, never one shared by strangers.
            anonymous = await new_anonymous_customer(session, row["org_id"], row["customer_name"])
            await session.execute(sql_update(InboundMessage).where(InboundMessage.id == row_id)
                                  .values(customer_id=anonymous))
            customer = CustomerRef(id=anonymous, user_id=None, wa_id=None, username=None,
                                   name=row["customer_name"])
        result.new_messages.setdefault(row["org_id"], []).append(StoredMessage(
            id=row_id, inbox_id=row["inbox_id"], wamid=row["wamid"], from_wa_id=row["from_wa_id"],
            from_user_id=row["from_user_id"], customer_name=row["customer_name"], type=row["type"],
            summary=row["summary"], sent_at=row["sent_at"].isoformat(), customer_id=customer.id,
            customer=customer.as_dict(),
        ))

    # Follow-ups of conversations an agent holds are attached, and put on the agent's stream, in the commit that
    # stores them: their inbox and agent then only tell each other, writing nothing.
    stored = [m for messages in result.new_messages.values() for m in messages]
    postgres = session.get_bind().dialect.name == "postgresql"
    attached = await attach_to_assigned(session, [(m.id, m.inbox_id, m.customer_id) for m in stored],
                                        share_lock=postgres)
    on_streams: list[tuple[int, StreamEvent]] = []  # (organization, event), appended with one lock at the end
    # The others (first messages, mostly) carry what opening their conversation needs: the inbox reads nothing.
    facts = await opening_facts(session, {(m.inbox_id, m.customer_id) for m in stored if m.id not in attached})
    result.new_messages = {org: [
        replace(m, transaction_id=attached[m.id][0]) if m.id in attached else
        replace(m, opening={"customer_ids": facts[(m.inbox_id, m.customer_id)][0],
                            "sticky_agent": facts[(m.inbox_id, m.customer_id)][1]})
        for m in messages] for org, messages in result.new_messages.items()}
    if attached:
        on_streams += [(org, message_shown(attached[m.id][1], attached[m.id][0], _as_shown(m)))
                       for org, messages in sorted(result.new_messages.items()) for m in messages if m.id in attached]

    status_rows = [_fit_row(MessageStatus, {
        "org_id": org_id, "wamid": s.wamid, "waba_id": s.waba_id, "phone_number_id": s.phone_number_id,
        "status": s.status, "recipient_id": s.recipient_id, "occurred_at": s.timestamp,
        "errors": s.errors, "raw": s.raw,
    }, keys=("wamid", "status")) for s in parsed.statuses]
    result.statuses = len(await insert_ignoring_duplicates(
        session, MessageStatus, status_rows, conflict_on=["org_id", "wamid", "status"]))
    # Statuses move our outbound messages forward (never back), in Meta's time order; a delivery
    # may only touch messages of organizations whose secret verified it.
    for status in sorted(parsed.statuses, key=lambda s: s.timestamp):
        moved = await apply_status(session, verified.get(status.waba_id, {org_id}), status.wamid, status.status,
                                   status.timestamp, status.errors)
        if moved is not None:
            result.status_changes.append(moved)
            if moved.agent_id is not None:
                # On the replying agent's stream from this commit: a status is never lost between the store and the
                # stream, and the agent writes nothing for it.
                on_streams.append((moved.org_id, (moved.agent_id, "message_status", moved.event())))
    for update in parsed.template_updates:
        await apply_status_event(session, verified.get(update.waba_id, {org_id}), update.waba_id,
                                 update.message_template_id, update.message_template_name,
                                 update.message_template_language, update.event, update.reason)

    change_rows: dict[str, dict[str, Any]] = {}
    for update in parsed.template_updates:
        key = _dedupe_key(update.waba_id, "message_template_status_update", update.raw)
        change_rows[key] = {
            "org_id": org_id, "waba_id": update.waba_id, "field": "message_template_status_update",
            "event": update.event or None, "template_id": update.message_template_id,
            "template_name": update.message_template_name, "template_language": update.message_template_language,
            "reason": update.reason, "value": update.raw, "dedupe_key": key,
        }
    for change in parsed.other_changes:
        value = change.value if isinstance(change.value, dict) else {"value": change.value}
        key = _dedupe_key(change.waba_id, change.field, value)
        change_rows[key] = {
            "org_id": org_id, "waba_id": change.waba_id, "field": change.field,
            "event": str(value.get("event")) if value.get("event") is not None else None,
            "template_id": None, "template_name": None, "template_language": None, "reason": None,
            "value": value, "dedupe_key": key,
        }
    result.other_changes = len(await insert_ignoring_duplicates(
        session, WebhookChange, [_fit_row(WebhookChange, row) for row in change_rows.values()],
        conflict_on=["org_id", "dedupe_key"]))
    return _Staged(result, on_streams, bool(attached), changed_customers)


def _finish(delivery: _Staged, told: Told) -> IntakeResult:
    """The delivery's answer, given what its group appended to agents' streams for it."""
    result = delivery.result
    result.told = told
    if delivery.attached:
        # Each follow-up carries its event as stored, for its agent to take without reading its stream.
        shown_as = {int(event[3]["message"]["id"]): (agent_id, event) for agent_id, events in told.items()
                    for event in events if event[2] == "message"}
        result.new_messages = {org: [replace(m, shown_as=shown_as.get(m.id)) for m in messages]
                               for org, messages in result.new_messages.items()}
        result.new_messages, result.agents_shown = _for_agents_only(result.new_messages, delivery.changed_customers)
    return result
