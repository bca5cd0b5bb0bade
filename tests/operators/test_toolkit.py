"""``group_rows``: the grouping every keyed stage runs on, at any batch size."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rxagent.events import row_numbers
from rxagent.operators.toolkit import group_rows


def reference(keys: list[int]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    return groups


@given(st.lists(st.integers(0, 5), max_size=200))
def test_groups_rows_by_key_in_arrival_order(keys: list[int]) -> None:
    assert group_rows(keys) == reference(keys)
    assert group_rows(iter(keys)) == reference(keys)  # an iterator of keys too


def test_batches_past_the_shared_row_numbers_count_on() -> None:
    # the row numbers are made once for 65,536 rows; a larger batch (a list or an
    # iterator of keys) still gets every row, numbered on
    n = len(row_numbers(0)) + 1000
    keys = [i % 3 for i in range(n)]
    expected = reference(keys)
    assert group_rows(keys) == expected
    assert group_rows(iter(keys)) == expected
    assert group_rows(iter(keys), row_numbers(n)) == expected
    assert list(row_numbers(n))[-1] == n - 1


def test_given_rows_are_used() -> None:
    assert group_rows(["a", "b", "a"], [10, 20, 30]) == {"a": [10, 30], "b": [20]}
