"""Faust's aiokafka consumer with the commit rule of pipeline.commits: never past an offset no agent acked,
reading committed records only.

Installed on the app's transport by agents.app.build_app. It overrides these methods of
faust-streaming 0.15 (pinned below 0.16 for this reason; re-check them on upgrade; the contract tests in
tests/unit/test_app_wiring.py fail when they change underneath):
- `_new_consumer_thread` / `AIOKafkaConsumerThread._create_worker_consumer`: the aiokafka consumer reads
  with isolation level read_committed (Faust does so only with exactly_once processing), so records of
  aborted producer transactions never reach an agent; they become gaps like transaction markers.
- `_add_gap`: Faust would mark offsets its fetch loop skipped as acked; here they stay missing until
  the broker shows they hold no record (the watchdog checks each suspected gap).
- `_new_offset`: the commit moves only over consecutive acked offsets starting at the committed one.
- `perform_seek`: after every assignment, a partition the group never committed gets the partition's
  earliest offset as its baseline, so the rule also holds before the first commit.
"""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import aiokafka
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaFaustConsumer
from faust.types import TP

from pipeline.commits import committable

MAX_SUSPECTED_GAPS = 10_000  # a producer with one transaction per event makes a gap per event


class SuspectedGap(NamedTuple):
    tp: TP
    start: int  # first offset not seen
    end: int  # the offset seen next


READ_COMMITTED = "read_committed"


class CommittedReadThread(AIOKafkaConsumerThread):  # type: ignore[misc]
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer: aiokafka.AIOKafkaConsumer = super()._create_worker_consumer(transport)
        # aiokafka hands the level to its fetcher in start(), which has not run yet.
        consumer._isolation_level = READ_COMMITTED
        return consumer


class GaplessConsumer(AIOKafkaFaustConsumer):  # type: ignore[misc]
    def _new_consumer_thread(self) -> CommittedReadThread:
        return CommittedReadThread(self, loop=self.loop, beacon=self.beacon)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        # Faust read `offset_to` right after `offset_from - 1`. The offsets in between either never held a
        # record (transaction markers, compaction) or were skipped by its fetch loop; the broker decides
        # which (agents.watchdog), and only empty offsets are acked.
        if offset_from < offset_to:
            try:
                self.suspected_gaps.put_nowait(SuspectedGap(tp, offset_from, offset_to))
            except asyncio.QueueFull:
                pass  # the commit stops at the gap; the watchdog's stall check settles it

    @property
    def suspected_gaps(self) -> asyncio.Queue[SuspectedGap]:
        queue: asyncio.Queue[SuspectedGap] | None = getattr(self, "_suspected_gaps", None)
        if queue is None:
            queue = asyncio.Queue(maxsize=MAX_SUSPECTED_GAPS)
            self._suspected_gaps = queue
        return queue

    def ack_empty(self, tp: TP, start: int, end: int) -> None:
        """Ack offsets [start, end) the broker showed to hold no record."""
        index, acked = self._acked_index[tp], self._acked[tp]
        for offset in range(start, end):
            if offset not in index:
                index.add(offset)
                acked.append(offset)

    def _new_offset(self, tp: TP) -> int | None:
        acked: list[int] = self._acked[tp]
        if not acked:
            return None
        acked.sort()
        offset, used = committable(acked, self._committed_offset[tp])
        if used:
            self._acked_index[tp].difference_update(acked[:used])
            del acked[:used]
        return offset

    async def perform_seek(self) -> None:
        await super().perform_seek()
        await self.ensure_baselines()

    async def ensure_baselines(self) -> None:
        """Give every assigned, never-committed partition its earliest offset as the committed baseline."""
        unknown = [
            tp for tp in self.assignment() if self._committed_offset.get(tp) is None and not self._is_changelog_tp(tp)
        ]
        if not unknown:
            return
        earliest: dict[Any, int] = dict(await self.earliest_offsets(*unknown))
        for tp in unknown:
            if self._committed_offset.get(tp) is None and tp in earliest:
                self._committed_offset[tp] = earliest[tp]
