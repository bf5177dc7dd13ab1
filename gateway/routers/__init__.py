"""Every router of the gateway, composed in one place."""

from fastapi import APIRouter

from gateway.routers import (
    agents,
    inboxes,
    me,
    messages,
    orgs,
    stats,
    templates,
    tokens,
    transactions,
    users,
    webhooks,
    whatsapp,
)

api_routers: list[APIRouter] = [
    me.router,
    orgs.router,
    users.router,
    tokens.router,
    whatsapp.router,
    templates.router,
    inboxes.router,
    stats.router,
    agents.router,
    transactions.router,
    messages.router,
    webhooks.router,
]
