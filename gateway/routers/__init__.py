"""Every router of the gateway, composed in one place."""

from fastapi import APIRouter

from gateway.routers import agents, inboxes, orgs, transactions, users, webhooks, whatsapp

api_routers: list[APIRouter] = [
    orgs.router,
    users.router,
    whatsapp.router,
    inboxes.router,
    agents.router,
    transactions.router,
    webhooks.router,
]
