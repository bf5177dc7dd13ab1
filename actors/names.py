"""Actor names as `ray list actors` and the dashboard show them."""

from __future__ import annotations


def inbox_actor_name(org_id: int, inbox_id: int) -> str:
    return f"inbox:{org_id}:{inbox_id}"


def agent_actor_name(org_id: int, user_id: int) -> str:
    return f"agent:{org_id}:{user_id}"


def sender_actor_name(phone_number_id: str) -> str:
    return f"sender:{phone_number_id}"


def agent_store_actor_name(index: int) -> str:
    return f"agent-store:{index}"
