"""Webhook deliveries arriving together share one store transaction (a group commit).

Deliveries are written by writers, each one transaction at a time, taking every delivery waiting when it starts.
SQLite writes one transaction at a time whatever the process, so it has one writer: one group is written at a time
and the deliveries arriving meanwhile form the next. PostgreSQL runs transactions side by side, and there every
delivery starts a writer of its own: the deliveries that came in while the gateway's event loop was busy share one
transaction (measured at 20 msg/s on a loaded machine: groups of 1-5, 1.24 of PostgreSQL's transactions per message
instead of 1.86-1.97), and none waits for a writer. A bounded number of writers ("lanes") was tried and measured
slower: in the long fault-injection soak on a loaded machine, 2 or 10 lanes held the intake to 10-15 of the 40
deliveries/s planned, against 24-32 with every delivery its own transaction, since a group's statements run one
after another and every delivery behind it waits for all of them.

A group takes its locks in the order every writer takes them (`gateway.intake.store_deliveries`), so on PostgreSQL
it cannot deadlock with another group or with an inbox's commit. Once it holds its customers' locks, it also
gives up waiting for any other lock well before PostgreSQL looks for deadlocks (`GROUP_LOCK_TIMEOUT_MS`): should a
cycle arise all the same (two groups moving two replies' statuses in opposite orders), the group yields (its
deliveries are then stored one by one), never an inbox's commit or an agent's request.

On PostgreSQL the gateway's connections wait at most `store_lock_wait_s` for any lock. A group whose customers
another transaction keeps locked that long fails whole with CustomersBusy, answered 503 (Meta redelivers): stored
one by one, each delivery would wait as long again.

Each delivery's answer is what storing it alone would have answered: they are stored one after another in the
transaction, so a redelivery in the same group is seen as a duplicate. A group that fails is tried again one
delivery at a time, so a delivery that cannot be stored fails alone and its neighbours are still acknowledged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence

from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.intake import Delivery, IntakeResult, store_deliveries
from meta.webhook_parser import ParsedWebhook
from store.db import Database
from store.errors import CustomersBusy

log = logging.getLogger(__name__)

# A group of several deliveries on PostgreSQL, once it holds its customers' locks, waits at most this long for any
# other lock: far below the server's deadlock_timeout (1 s by default), after which the other side of a cycle would
# be the one rolled back.
GROUP_LOCK_TIMEOUT_MS = 300


async def _store_all(session: AsyncSession, deliveries: Sequence[Delivery]) -> list[IntakeResult]:
    return await store_deliveries(session, deliveries, GROUP_LOCK_TIMEOUT_MS if len(deliveries) > 1 else None)


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
        self._writers: set[asyncio.Task[None]] = set()

    async def store(self, org_id: int, parsed: ParsedWebhook, verified: dict[str, set[int]]) -> IntakeResult:
        """Store one delivery durably (`store_delivery`), in the next group; its own result once committed.

        On SQLite, a delivery the writer has not taken after the store's pool timeout (the writer held up, by the
        store's lock say) is refused as a step finding no connection free is: `PoolTimeout`, which the gateway
        answers 503 (Meta redelivers). Elsewhere its own writer takes it at once."""
        future: asyncio.Future[IntakeResult] = asyncio.get_running_loop().create_future()
        entry = ((org_id, parsed, verified), future)
        self._waiting.append(entry)
        self._writers = {writer for writer in self._writers if not writer.done()}
        if not (self._db.one_writer and self._writers):
            self._writers.add(asyncio.ensure_future(self._write_groups()))
        if not self._db.one_writer:
            return await future
        try:
            return await asyncio.wait_for(asyncio.shield(future), self._db.pool_timeout_s)
        except TimeoutError:
            for i, waiting in enumerate(self._waiting):
                if waiting is entry:
                    del self._waiting[i]
                    raise PoolTimeout(f"no intake writer was free within {self._db.pool_timeout_s:g} s") from None
            return await future  # being written: its outcome

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
        except CustomersBusy as exc:
            # Waited the gateway's lock wait for customers another transaction is writing: one by one they would
            # wait again, each as long. Every delivery is answered 503 now (Meta redelivers).
            for _, future in group:
                _settle(future, error=exc)
            return
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
