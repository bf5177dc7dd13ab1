"""Pure presence rules: when an agent who lets offers ring out is set away (Genesys "Not Responding")."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MissedOutcome", "after_missed_offer", "missed_reason"]


@dataclass(frozen=True, slots=True)
class MissedOutcome:
    missed_in_a_row: int
    set_away: bool


def missed_reason(count: int) -> str:
    return f"missed {count} offers in a row"


def after_missed_offer(missed_in_a_row: int, threshold: int) -> MissedOutcome:
    """Count one more missed offer; at `threshold` (0 = never) the agent is set away and the count restarts.

    Only misses count: an accept or a decline is an answer, and resets the count (the caller sets 0).
    """
    if missed_in_a_row < 0 or threshold < 0:
        raise ValueError("counts and thresholds are never negative")
    count = missed_in_a_row + 1
    if threshold and count >= threshold:
        return MissedOutcome(missed_in_a_row=0, set_away=True)
    return MissedOutcome(missed_in_a_row=count, set_away=False)
