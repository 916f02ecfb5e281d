"""Background passes keep to their share of the loop: after each chunk they sleep what keeps the chunk to
that share (19 times its time for a twentieth), on a fake clock; the dedupe refile and sweep pause every chunk."""

from __future__ import annotations

from typing import Any

import pytest

from agents.dedupe import file_entries, sweep
from pipeline.expiry_index import ExpiryIndex
from pipeline.pacing import CHUNK, LOOP_SHARE, Pacer


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def perf_counter(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay

    def pacer(self, share: float = LOOP_SHARE) -> Pacer:
        return Pacer(share, clock=self.perf_counter, sleep=self.sleep)


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_a_pause_sleeps_so_the_work_is_its_share_of_the_time(clock: Clock) -> None:
    pacer = clock.pacer(share=0.1)
    clock.now += 0.02  # a chunk of 20 ms
    await pacer.pause()
    clock.now += 0.005
    await pacer.pause()
    assert clock.sleeps == pytest.approx([0.18, 0.045])
    assert pacer.slept == pytest.approx(0.225)
    with pytest.raises(ValueError):
        Pacer(share=0)


class SlowEntries:
    """(key, value) pairs that each take 1 ms of the fake clock to produce."""

    def __init__(self, clock: Clock, count: int, first_seen_ms: int) -> None:
        self.clock, self.count, self.first_seen_ms = clock, count, first_seen_ms

    def __iter__(self) -> Any:
        for n in range(self.count):
            self.clock.now += 0.001
            yield f"{n:064x}", {"t": self.first_seen_ms, "p": 0, "o": n}


async def test_the_refile_pass_files_everything_at_a_twentieth_of_the_loop(clock: Clock) -> None:
    index = ExpiryIndex(bucket_ms=1000)
    assert await file_entries(index, SlowEntries(clock, 3 * CHUNK + 5, 500), clock.pacer(), interrupted=lambda: False)
    assert len(index) == 3 * CHUNK + 5
    assert clock.sleeps == pytest.approx([19 * CHUNK / 1000] * 3)  # 1 s of work per chunk, then 19 s asleep


async def test_the_refile_pass_stops_at_a_pause_when_assigned_again(clock: Clock) -> None:
    index = ExpiryIndex(bucket_ms=1000)
    done = await file_entries(index, SlowEntries(clock, 5 * CHUNK, 500), clock.pacer(), interrupted=lambda: True)
    assert not done and len(index) == CHUNK and len(clock.sleeps) == 1


async def test_a_sweep_removes_what_expired_pausing_every_chunk(clock: Clock) -> None:
    index = ExpiryIndex(bucket_ms=1000)
    store: dict[str, Any] = {}
    for key, value in SlowEntries(clock, 2 * CHUNK + 1, 500):
        store[key] = value
        index.add(key, 500)
    fresh = f"{10**6:064x}"
    store[fresh], clock.sleeps = {"t": 90_000, "p": 0, "o": 1}, []
    index.add(fresh, 500)  # filed at 500 but forwarded again at 90,000: not expired
    removed = await sweep(index, store, now_ms=100_000, window_ms=60_000, pacer=clock.pacer())
    assert removed == 2 * CHUNK + 1 and list(store) == [fresh] and len(index) == 1
    assert len(clock.sleeps) == 2
