"""MicroBatcher: requests that queue while a batch is worked on are handled together, each caller gets its own
result or error."""

from __future__ import annotations

import threading
import time

import pytest

from serving.http.batching import MicroBatcher


def test_items_queued_while_busy_are_handled_in_one_call_and_each_gets_its_result():
    release = threading.Event()
    calls: list[list[int]] = []

    def square(items: list[int]) -> list[int]:
        calls.append(list(items))
        if len(calls) == 1:
            release.wait(5)  # the first batch is slow: the next items queue behind it
        return [i * i for i in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(square, max_batch=4)
    try:
        first = batcher.submit(1)
        time.sleep(0.05)
        queued = [batcher.submit(i) for i in range(2, 8)]
        release.set()
        assert first.result(5) == 1
        assert [f.result(5) for f in queued] == [i * i for i in range(2, 8)]
    finally:
        batcher.close()
    assert calls == [[1], [2, 3, 4, 5], [6, 7]]  # at most max_batch at once, in order
    assert (batcher.batches, batcher.items) == (3, 7)


def test_an_error_result_goes_to_its_caller_and_a_failed_call_to_every_caller_of_the_batch():
    def picky(items: list[int]) -> list[object]:
        if 13 in items:
            raise RuntimeError("the whole batch failed")
        return [ValueError(f"bad {i}") if i < 0 else i for i in items]

    batcher: MicroBatcher[int, object] = MicroBatcher(picky)
    try:
        assert batcher.submit(3).result(5) == 3
        with pytest.raises(ValueError, match="bad -1"):
            batcher.submit(-1).result(5)
        with pytest.raises(RuntimeError, match="the whole batch failed"):
            batcher.submit(13).result(5)
        assert batcher.submit(4).result(5) == 4  # the worker lives on
    finally:
        batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(5)
    assert not [t for t in threading.enumerate() if t.name == "micro-batch"]


def test_max_batch_must_be_positive():
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(lambda items: items, max_batch=0)
