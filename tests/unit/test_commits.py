"""The commit rule: never past an offset no agent acked (pipeline.commits)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.commits import committable


def test_consecutive_acks_from_the_committed_offset_move_the_commit() -> None:
    assert committable([10, 11, 12], 10) == (13, 3)


def test_a_missing_head_offset_stops_the_commit_even_when_only_one_is_missing() -> None:
    # Faust's rule commits 13 here (min(acked) - committed == 1), losing offset 10.
    assert committable([11, 12], 10) == (None, 0)


def test_a_hole_stops_the_commit_at_the_hole() -> None:
    assert committable([10, 11, 13, 14], 10) == (12, 2)


def test_unknown_committed_offset_commits_nothing() -> None:
    assert committable([0, 1, 2], None) == (None, 0)


def test_committed_zero_is_a_real_baseline() -> None:
    assert committable([1, 2], 0) == (None, 0)
    assert committable([0, 1, 2], 0) == (3, 3)


def test_stale_and_repeated_acks_are_consumed_without_moving_past_a_hole() -> None:
    assert committable([3, 4, 10, 10, 11], 10) == (12, 5)
    assert committable([3, 4, 12], 10) == (None, 2)


@given(
    committed=st.integers(0, 50),
    acked=st.lists(st.integers(0, 100), max_size=60),
)
def test_the_commit_never_passes_an_offset_that_was_not_acked(committed: int, acked: list[int]) -> None:
    acked = sorted(acked)
    offset, used = committable(acked, committed)
    if offset is not None:
        assert offset > committed
        assert set(range(committed, offset)) <= set(acked)
        assert offset not in acked  # the run is maximal
    else:
        assert committed not in acked
    assert all(a < (offset if offset is not None else committed) for a in acked[:used])
