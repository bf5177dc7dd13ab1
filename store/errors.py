"""What the store's failures mean to a caller, for every process (plain Python: agent actors import it)."""

from __future__ import annotations

# SQLSTATE classes of connection trouble (08), a transaction the server rolled back to break a deadlock or a
# serialization conflict (40), a server out of resources such as connections (53) and a server shutting down
# (57): the statement did not run, or its transaction was undone; the same call may succeed later.
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "40", "53", "57")


class StoreUnavailable(Exception):
    """The store could not be reached, or was busy past waiting: the step did not happen; try again later."""


def means_unavailable(sqlstate: str) -> bool:
    return sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES


# SQLSTATE lock_not_available: a statement waited for a lock past its connection's `lock_timeout`.
LOCK_NOT_AVAILABLE = "55P03"


def sqlstate_of(exc: BaseException) -> str:
    """The SQLSTATE of a DBAPI error, SQLAlchemy's (through its driver's) or the driver's own; "" when it has none."""
    return str(getattr(getattr(exc, "orig", exc), "sqlstate", "") or "")


def lock_not_available(exc: BaseException) -> bool:
    """A DBAPI error of a lock not free within the allowed wait."""
    return sqlstate_of(exc) == LOCK_NOT_AVAILABLE


class CustomersBusy(Exception):
    """Another transaction kept writing the customers a delivery names past the connection's lock wait: nothing of
    the delivery was written; it may be delivered again later (`store.customers.lock_identifiers`)."""
