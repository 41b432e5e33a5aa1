"""How many notifications a projection batch reads: live-sized at the head, bigger while behind."""

from __future__ import annotations

import pytest

from ledger_service.projections.runner import (
    BATCH_GROWTH,
    BATCH_STATE_BYTES_MAX,
    BatchResult,
    BatchSizer,
)


def full(sizer: BatchSizer, state_bytes_each: int = 1_000) -> BatchResult:
    n = sizer.limit
    return BatchResult(n, n, 0, n * state_bytes_each)


def test_batches_grow_while_they_come_back_full_up_to_the_largest() -> None:
    sizer = BatchSizer(500, 10_000)
    seen = [sizer.limit]
    for _ in range(5):
        sizer.after(full(sizer))
        seen.append(sizer.limit)
    assert seen == [500, 500 * BATCH_GROWTH, 500 * BATCH_GROWTH**2, 10_000, 10_000, 10_000]


def test_a_short_batch_means_the_head_is_near_and_the_next_is_live_sized_again() -> None:
    sizer = BatchSizer(500, 10_000)
    sizer.after(full(sizer))
    sizer.after(full(sizer))
    sizer.after(BatchResult(7, 7, 0, 7_000))
    assert sizer.limit == 500
    sizer.after(BatchResult(0, 0, 0, 0))
    assert sizer.limit == 500


def test_big_events_cut_the_next_batch_to_the_bytes_allowed() -> None:
    sizer = BatchSizer(500, 10_000)
    event_bytes = 4 * 1024 * 1024  # a usage event of 5,000 lines is megabytes
    sizer.after(full(sizer, event_bytes))
    assert sizer.limit == BATCH_STATE_BYTES_MAX // event_bytes
    sizer.after(BatchResult(1, 1, 0, BATCH_STATE_BYTES_MAX * 2))
    assert sizer.limit == 1  # never none


def test_a_fixed_size_never_grows() -> None:
    sizer = BatchSizer(2_000, 2_000)
    sizer.after(full(sizer))
    assert sizer.limit == 2_000


@pytest.mark.parametrize(("smallest", "largest"), [(0, 10), (11, 10)])
def test_batch_sizes_must_be_positive_and_ordered(smallest: int, largest: int) -> None:
    with pytest.raises(ValueError, match="batch sizes"):
        BatchSizer(smallest, largest)
