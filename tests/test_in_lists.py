"""IN lists go to the store a few hundred values at a time, every value once and in order."""

from __future__ import annotations

from store.in_lists import IN_LIST_MAX, in_batches


def test_values_are_cut_into_batches_of_at_most_the_bound_in_order() -> None:
    values = list(range(2 * IN_LIST_MAX + 1))
    batches = list(in_batches(values))
    assert [len(batch) for batch in batches] == [IN_LIST_MAX, IN_LIST_MAX, 1]
    assert [value for batch in batches for value in batch] == values
    assert list(in_batches([])) == []
