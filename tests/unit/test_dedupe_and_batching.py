from __future__ import annotations

import asyncio

import pytest

from pipeline.batching import Batcher, BatcherFailed
from pipeline.dedupe import Decision, Seen, decide


def test_decisions() -> None:
    seen = Seen(first_seen_ms=1_000, partition=2, offset=40)
    assert decide(None, now_ms=5_000, window_ms=10_000, partition=2, offset=40) is Decision.FORWARD
    assert decide(seen, now_ms=5_000, window_ms=10_000, partition=2, offset=41) is Decision.DUPLICATE
    assert decide(seen, now_ms=5_000, window_ms=10_000, partition=1, offset=40) is Decision.DUPLICATE
    assert decide(seen, now_ms=5_000, window_ms=10_000, partition=2, offset=40) is Decision.REDELIVERY
    assert decide(seen, now_ms=11_000, window_ms=10_000, partition=3, offset=1) is Decision.FORWARD


def test_seen_round_trip_and_garbage() -> None:
    seen = Seen(1, 2, 3)
    assert Seen.from_json(seen.to_json()) == seen
    assert Seen.from_json(None) is None and Seen.from_json({"t": "x"}) is None


async def test_batches_respect_size_and_order() -> None:
    batches: list[list[int]] = []

    async def handle(batch: list[int]) -> None:
        batches.append(batch)

    batcher = Batcher(handle, max_size=10, linger=0.05)
    async with batcher.running():
        for i in range(35):
            await batcher.add(i)
        await batcher.flush()
    assert [x for b in batches for x in b] == list(range(35))
    assert all(len(b) <= 10 for b in batches)


async def test_linger_flushes_a_partial_batch() -> None:
    done = asyncio.Event()

    async def handle(batch: list[int]) -> None:
        done.set()

    batcher = Batcher(handle, max_size=100, linger=0.01)
    async with batcher.running():
        await batcher.add(1)
        await asyncio.wait_for(done.wait(), 2)


async def test_backpressure_blocks_add_while_the_handler_is_slow() -> None:
    release = asyncio.Event()
    handled: list[int] = []

    async def handle(batch: list[int]) -> None:
        await release.wait()
        handled.extend(batch)

    batcher = Batcher(handle, max_size=2, linger=0, max_pending=4)

    async def produce() -> None:
        for i in range(20):
            await batcher.add(i)

    async with batcher.running():
        producer = asyncio.ensure_future(produce())
        for _ in range(200):  # wait (bounded) until the producer is parked on a full buffer
            if batcher.pending >= 5:
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.02)
        assert not producer.done()
        assert batcher.pending <= 2 + 4, "at most one batch in flight plus max_pending waiting"
        release.set()
        await asyncio.wait_for(producer, 2)
        await batcher.flush()
    assert handled == list(range(20))


async def test_a_failed_handler_fails_later_adds() -> None:
    async def handle(batch: list[int]) -> None:
        raise RuntimeError("sink exploded")

    batcher = Batcher(handle, max_size=1, linger=0)
    async with batcher.running():
        await batcher.add(1)
        with pytest.raises(BatcherFailed, match="sink exploded"):
            for _ in range(100):
                await batcher.add(2)
                await asyncio.sleep(0.01)
