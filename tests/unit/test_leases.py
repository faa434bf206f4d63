"""The arithmetic of leased counter blocks (shared/leases.py): how much a lease takes, and what of it is usable."""

from __future__ import annotations

import pytest

from shared.leases import MAX_BLOCK, MIN_BLOCK, SHARE, block_size, usable


@pytest.mark.parametrize(
    ("headroom", "unit", "size"),
    [
        (10_000_000, 1, MAX_BLOCK),  # far from the limit: the largest block
        (SHARE * 10, 1, 10),  # a SHAREth of the headroom
        (SHARE * MIN_BLOCK, 1, MIN_BLOCK),  # the smallest block still leased
        (SHARE * MIN_BLOCK - 1, 1, 0),  # near the limit: exact counting
        (60, 1, 7),  # rpm 60, nothing counted yet
        (0, 1, 0),
        (-5, 1, 0),  # over the limit already
        (500_000_000, 10_000_000, 6 * 10_000_000),  # $500 of $10 worst cases: 6 of them, whole
        (10**15, 11, MAX_BLOCK * 11),
        (100_000_000, 12_000_000, 0),  # a budget covering 8 worst cases is counted exactly
        (1000, 0, 0),  # a free request: nothing to lease
    ],
)
def test_a_block_is_a_share_of_the_headroom_in_whole_units_or_nothing(headroom: int, unit: int, size: int) -> None:
    assert block_size(headroom, unit) == size
    assert size % max(unit, 1) == 0 and size * SHARE <= max(headroom, 0)


@pytest.mark.parametrize(
    ("total", "taken", "limit", "got"),
    [
        (64, 64, 1000, 64),  # all of it under the limit
        (1000, 64, 1000, 64),  # ends exactly at the limit
        (1010, 64, 1000, 54),  # the last 10 are beyond it
        (1064, 64, 1000, 0),  # started at the limit: nothing
        (2000, 64, 1000, 0),  # others went far beyond it
    ],
)
def test_only_the_units_within_the_limit_are_usable(total: int, taken: int, limit: int, got: int) -> None:
    assert usable(total, taken, limit) == got


def test_blocks_never_hand_out_more_than_the_limit() -> None:
    """Replicas leasing in turn off one counter (any order of answers) never hold more usable units than the limit."""
    limit, total, handed = 1000, 0, 0
    while (size := block_size(limit - total, 1)) or total < limit:
        size = size or 1  # exact counting near the limit
        total += size
        handed += usable(total, size, limit)
        if total > limit + 2 * MAX_BLOCK:
            break
    assert handed == limit
