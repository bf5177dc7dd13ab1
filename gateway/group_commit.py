"""Webhook deliveries arriving together share one store transaction (a group commit), on SQLite.

SQLite writes one transaction at a time whatever the process, so there one group is written at a
time; deliveries that arrive meanwhile wait and form the next group, so under load a single lock turn
and commit carry many deliveries, and with little traffic a group is one delivery. PostgreSQL runs
transactions side by side (and serialises deliveries naming the same customer itself): there each
delivery is its own transaction, as grouping them would queue every delivery behind one connection
(measured: the long fault-injection soak's intake fell from 40 to ~17 deliveries/s), and groups written side
by side hold several deliveries' row locks at once, which can deadlock with an inbox's commit (a conversation's
row, then its agent's stream row: measured in the long soak, an agent's close answered 500).

Each delivery's answer is what storing it alone would have answered: they are stored one after
another in the transaction, so a redelivery in the same group is seen as a duplicate. A group that
fails is tried again one delivery at a time, so a delivery that cannot be stored fails alone and its
neighbours are still acknowledged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.intake import IntakeResult, store_delivery
from meta.webhook_parser import ParsedWebhook
from store.db import Database

log = logging.getLogger(__name__)

Delivery = tuple[int, ParsedWebhook, dict[str, set[int]]]


async def _store_all(session: AsyncSession, deliveries: Sequence[Delivery]) -> list[IntakeResult]:
    return [await store_delivery(session, org_id, parsed, verified) for org_id, parsed, verified in deliveries]


def _settle(future: asyncio.Future[IntakeResult], result: IntakeResult | None = None,
            error: BaseException | None = None) -> None:
    if future.done():  # the request went away (the delivery is stored all the same)
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert result is not None
        future.set_result(result)


class DeliveryGroupCommit:
    def __init__(self, db: Database, max_group: int = 64) -> None:
        self._db = db
        self._max_group = max_group
        self._waiting: list[tuple[Delivery, asyncio.Future[IntakeResult]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def store(self, org_id: int, parsed: ParsedWebhook, verified: dict[str, set[int]]) -> IntakeResult:
        """Store one delivery durably (`store_delivery`), in the next group; its own result once committed."""
        if not self._db.one_writer:
            return await self._store_alone((org_id, parsed, verified))
        future: asyncio.Future[IntakeResult] = asyncio.get_running_loop().create_future()
        self._waiting.append(((org_id, parsed, verified), future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_groups())
        return await future

    async def _store_alone(self, delivery: Delivery) -> IntakeResult:
        return (await self._db.write_session(functools.partial(_store_all, deliveries=[delivery])))[0]

    async def _write_groups(self) -> None:
        try:
            while self._waiting:
                group = self._waiting[:self._max_group]
                del self._waiting[:self._max_group]
                await self._write(group)
        except BaseException as exc:  # stopping: nobody may be left waiting for an answer
            for _, future in self._waiting:
                _settle(future, error=exc if isinstance(exc, Exception) else RuntimeError("the gateway is stopping"))
            self._waiting.clear()
            raise

    async def _write(self, group: list[tuple[Delivery, asyncio.Future[IntakeResult]]]) -> None:
        deliveries = [delivery for delivery, _ in group]
        try:
            results = await self._db.write_session(functools.partial(_store_all, deliveries=deliveries))
        except Exception as exc:
            if len(group) == 1:
                _settle(group[0][1], error=exc)
                return
            log.warning("a group of %d deliveries failed (%s); storing each on its own", len(group), exc)
            for delivery, future in group:
                try:
                    alone = await self._store_alone(delivery)
                except Exception as error:
                    _settle(future, error=error)
                else:
                    _settle(future, alone)
            return
        for (_, future), result in zip(group, results, strict=True):
            _settle(future, result)
