"""The dynamic batcher's knobs, in-process: max batch size, max queue delay, the queue bound, idle blocking."""

from __future__ import annotations

import threading
import time

import pytest

from service.workers.batcher import BatchLimits, DynamicBatcher


def test_with_no_delay_a_batch_is_what_is_queued_now_up_to_the_max() -> None:
    batcher: DynamicBatcher[int] = DynamicBatcher(BatchLimits(max_batch_size=2))
    for i in range(3):
        assert batcher.put(i)
    assert batcher.next_batch(idle_timeout=1) == [0, 1]
    assert batcher.next_batch(idle_timeout=1) == [2]  # alone: it does not wait for company


def test_a_delay_lets_later_requests_join_the_oldest() -> None:
    batcher: DynamicBatcher[str] = DynamicBatcher(BatchLimits(max_batch_size=8, max_queue_delay=0.5))
    batcher.put("first")
    threading.Timer(0.05, batcher.put, args=("second",)).start()
    start = time.monotonic()
    assert batcher.next_batch(idle_timeout=1) == ["first", "second"]
    assert time.monotonic() - start >= 0.45  # it waited out the delay for more


def test_a_full_batch_goes_at_once_whatever_the_delay() -> None:
    batcher: DynamicBatcher[int] = DynamicBatcher(BatchLimits(max_batch_size=2, max_queue_delay=30))
    batcher.put(1)
    batcher.put(2)
    start = time.monotonic()
    assert batcher.next_batch(idle_timeout=1) == [1, 2]
    assert time.monotonic() - start < 5


def test_past_the_queue_bound_put_refuses_and_queues_nothing() -> None:
    batcher: DynamicBatcher[int] = DynamicBatcher(BatchLimits(max_batch_size=4, max_queue_size=2))
    assert batcher.put(1) and batcher.put(2)
    assert not batcher.put(3)
    assert len(batcher) == 2
    assert batcher.next_batch(idle_timeout=1) == [1, 2]
    assert batcher.put(3)  # room again once a batch is taken


def test_an_idle_batcher_blocks_then_returns_nothing() -> None:
    batcher: DynamicBatcher[int] = DynamicBatcher(BatchLimits(max_batch_size=4))
    start = time.monotonic()
    assert batcher.next_batch(idle_timeout=0.1) == []
    assert time.monotonic() - start >= 0.09


def test_an_arrival_wakes_a_waiting_batch_thread() -> None:
    batcher: DynamicBatcher[int] = DynamicBatcher(BatchLimits(max_batch_size=4))
    threading.Timer(0.05, batcher.put, args=(7,)).start()
    start = time.monotonic()
    assert batcher.next_batch(idle_timeout=30) == [7]
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("limits", [{"max_batch_size": 0}, {"max_batch_size": 1, "max_queue_delay": -1}])
def test_bad_limits_are_refused(limits: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BatchLimits(**limits)  # type: ignore[arg-type]
