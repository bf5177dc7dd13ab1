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
