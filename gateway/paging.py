"""Paged lists: `limit` + opaque `cursor` in, `{"items": [...], "next_cursor": ...}` out.

A cursor is the keyset position of the last item shown (e.g. its id, or (waiting_since, id) for the
queue), base64 of a small JSON list. Keyset rather than offset paging: items inserted or removed
while a client walks the pages never make it skip or repeat one.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel
from sqlalchemy import Select

from gateway.errors import ApiError

DEFAULT_LIMIT = 50
MAX_LIMIT = 200

T = TypeVar("T")
Key = tuple[Any, ...]


class Page(BaseModel, Generic[T]):
    """One page of a list; `next_cursor` is null on the last page."""

    items: list[T]
    next_cursor: str | None = None


def encode_cursor(key: Key) -> str:
    values = [v.isoformat() if isinstance(v, datetime) else v for v in key]
    return base64.urlsafe_b64encode(json.dumps(values, separators=(",", ":")).encode()).decode().rstrip("=")


def _bad_cursor() -> ApiError:
    return ApiError(422, "invalid cursor: pass back the next_cursor of a previous page unchanged",
                    field=("query", "cursor"))


def decode_cursor(cursor: str, kinds: Sequence[type]) -> Key:
    """The key a cursor carries, each value checked against `kinds` (int, str or datetime); 422 if not."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise _bad_cursor() from exc
    if not isinstance(raw, list) or len(raw) != len(kinds):
        raise _bad_cursor()
    key: list[Any] = []
    for value, kind in zip(raw, kinds, strict=True):
        if kind is datetime:
            if not isinstance(value, str):
                raise _bad_cursor()
            try:
                key.append(datetime.fromisoformat(value))
            except ValueError as exc:
                raise _bad_cursor() from exc
        elif kind is int:
            if type(value) is not int or not 0 <= value < 2**63:
                raise _bad_cursor()
            key.append(value)
        else:
            if not isinstance(value, kind):
                raise _bad_cursor()
            key.append(value)
    return tuple(key)


def _declared_query_names(dependant: Dependant) -> set[str]:
    """Query parameters of an endpoint and of every dependency it uses."""
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _declared_query_names(sub)
    return names


def reject_unknown_query(request: Request) -> None:
    """422 naming a query parameter the route does not take (a typo must not silently be ignored)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    known = _declared_query_names(route.dependant)
    unknown = [name for name in request.query_params if name not in known]
    if unknown:
        raise ApiError(422, f"unknown query parameter {unknown[0]}; this list takes {', '.join(sorted(known))}",
                       field=("query", unknown[0]))


@dataclass(frozen=True)
class PageRequest:
    limit: int
    cursor: str | None

    def after(self, kinds: Sequence[type]) -> Key | None:
        """The key of the last item of the previous page, or None for the first page."""
        return None if self.cursor is None else decode_cursor(self.cursor, kinds)

    def oldest_first(self, query: Select[Any], id_column: Any) -> Select[Any]:
        """`query`'s page, oldest first by `id_column` (the key of `page(..., lambda row: (row.id,), ...)`)."""
        after = self.after([int])
        if after is not None:
            query = query.where(id_column > after[0])
        return query.order_by(id_column).limit(self.limit + 1)

    def page(self, rows: Sequence[Any], key: Callable[[Any], Key], out: Callable[[Any], Any]) -> Page[Any]:
        """Rows fetched with `limit + 1` (the extra one only tells whether another page follows)."""
        shown = rows[: self.limit]
        more = len(rows) > self.limit
        return Page[Any](items=[out(row) for row in shown],
                         next_cursor=encode_cursor(key(shown[-1])) if more and shown else None)


async def page_request(  # async: a plain `def` dependency would run in FastAPI's thread pool
    request: Request,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"Items per page (1..{MAX_LIMIT})")] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page; omit for the first")] = None,
) -> PageRequest:
    reject_unknown_query(request)
    return PageRequest(limit=limit, cursor=cursor)


Paging = Annotated[PageRequest, Depends(page_request)]
