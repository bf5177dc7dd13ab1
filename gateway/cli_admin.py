"""`wa-router admin`: platform chores on the store (organizations, tokens, the secret key)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.table import Table

from gateway.cli_output import CliError, load_settings, one_line_errors, out

admin_app = typer.Typer(help="Platform chores on the store: organizations, tokens.", no_args_is_help=True,
                        rich_markup_mode=None)


@admin_app.command("create-org")
@one_line_errors
def create_org(
    name: Annotated[str, typer.Argument(help="The organization's name.")],
    owner_name: Annotated[str, typer.Option(help="The owner's name.")],
    owner_email: Annotated[str, typer.Option(help="The owner's email.")],
) -> None:
    """Create an organization and its owner."""
    from config.models import OrganizationCreate
    from gateway.admin_ops import AdminError, create_organization

    body = OrganizationCreate.model_validate({"name": name, "owner": {"name": owner_name, "email": owner_email}})
    try:
        org_id, owner_id, token = asyncio.run(create_organization(load_settings(), body))
    except AdminError as exc:
        raise CliError(str(exc)) from exc
    out.print(f"organization {org_id} created; owner user {owner_id}")
    out.print(f"owner token (shown once): {token}")


@admin_app.command("issue-token")
@one_line_errors
def issue_token(user_id: Annotated[int, typer.Argument(help="The user's id.")]) -> None:
    """Issue a new API token for a user."""
    from gateway.admin_ops import AdminError, issue_user_token

    try:
        name, token, org_id = asyncio.run(issue_user_token(load_settings(), user_id))
    except AdminError as exc:
        raise CliError(str(exc)) from exc
    out.print(f"token for user {user_id} ({name}) of organization {org_id} (shown once): {token}")


@admin_app.command("rotate-token")
@one_line_errors
def rotate_token() -> None:
    """Replace the platform admin token."""
    from gateway.admin_ops import rotate_admin

    out.print(f"new platform admin token (shown once): {asyncio.run(rotate_admin(load_settings()))}")


@admin_app.command("orgs")
@one_line_errors
def orgs() -> None:
    """List the organizations."""
    from gateway.admin_ops import list_organizations

    rows = asyncio.run(list_organizations(load_settings()))
    if not rows:
        out.print("no organizations yet")
        return
    table = Table("id", "name", "users", "created")
    for row in rows:
        table.add_row(str(row.id), row.name, str(row.users), row.created_at.strftime("%Y-%m-%d %H:%M"))
    out.print(table)


@admin_app.command("rotate-secret-key")
@one_line_errors
def rotate_secret_key() -> None:
    """Re-encrypt stored secrets with a new key.

    Every gateway must be stopped first.
    """
    from gateway.admin_ops import AdminError
    from gateway.admin_ops import rotate_secret_key as rotate

    try:
        out.print(asyncio.run(rotate(load_settings())))
    except AdminError as exc:
        raise CliError(str(exc)) from exc
