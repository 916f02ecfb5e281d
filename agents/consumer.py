"""Faust's aiokafka consumer with the commit rule of pipeline.commits: never past an offset no agent acked,
reading committed records only.

Installed on the app's transport by agents.app.build_app. It overrides these methods of
faust-streaming 0.15 (pinned below 0.16 for this reason; re-check them on upgrade; the contract tests in
tests/unit/test_app_wiring.py fail when they change underneath):
- `_new_consumer_thread`: the consumer "thread" runs in the worker's own event loop (InLoopConsumerThread,
  over mode-streaming 0.7's ServiceThread, pinned below 0.8 for this reason).
- `AIOKafkaConsumerThread._create_worker_consumer`: the aiokafka consumer reads
  with isolation level read_committed (Faust does so only with exactly_once processing), so records of
  aborted producer transactions never reach an agent; they become gaps like transaction markers.
- `_add_gap`: Faust would mark offsets its fetch loop skipped as acked; here they stay missing until
  the broker shows they hold no record (the watchdog checks each suspected gap).
- `_new_offset`: the commit moves only over consecutive acked offsets starting at the committed one.
- `perform_seek`: after every assignment, a partition the group never committed gets the partition's
  earliest offset as its baseline, so the rule also holds before the first commit.
- `_drain_messages` (the fetch loop): records of a topic an agent reads in batches (`feed`) go to that agent
  as one batch per partition and fetch, without Faust's per-event stream, conductor and callbacks; other
  topics (the table changelog during recovery) take Faust's own path. It replaces Faust's loop, which drops
  records when flow stops or the generation changes mid-batch (`wait_first(callback(message),
  suspend_flow.wait())` sets the read offset of a message it never delivered; `getmany` breaks off after
  aiokafka already moved past the rest of the fetch), the cause of the gaps the watchdog used to repair:
  here a partition whose records cannot be handed over is sought back to its first record. Offsets between
  two records of one fetch hold no readable record (aiokafka returned the records in a row: transaction
  markers, aborted or compacted records) and are acked as empty at once; a jump between two fetches is
  still reported as a suspected gap for the watchdog to check with the broker.

Every other use of a Faust internal lives here too (the event context tables need, the ack bookkeeping the
watchdog reads), so that the contract tests cover them all.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import aiokafka
from aiokafka.structs import ConsumerRecord
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaFaustConsumer
from faust.types import TP, AppT
from mode.utils.futures import maybe_async
from rocksdict import WriteBatch

from pipeline.commits import committable

MAX_SUSPECTED_GAPS = 10_000  # a producer with one transaction per event makes a gap per event


class SuspectedGap(NamedTuple):
    tp: TP
    start: int  # first offset not seen
    end: int  # the offset seen next


READ_COMMITTED = "read_committed"
FEED_DEPTH = 8  # batches fetched ahead of the agent (each at most broker_max_poll_records)


@dataclass(frozen=True, slots=True)
class Batch:
    """Records of one partition from one fetch, in offset order, as the agent gets them."""

    tp: TP
    records: Sequence[ConsumerRecord[bytes, bytes]]
    generation: int


class Feed:
    """The batches of one topic, from the fetch loop to the one agent that reads that topic."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize=FEED_DEPTH)
        self.taken: collections.deque[Batch] = collections.deque()  # with the agent, not acked yet

    def holds(self, tp: TP, offset: int) -> bool:
        pending = [*cast(Any, self.queue)._queue, *self.taken]
        return any(
            b is not None and b.tp == tp and b.records[0].offset <= offset <= b.records[-1].offset for b in pending
        )


class CommittedReadThread(AIOKafkaConsumerThread):  # type: ignore[misc]
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer: aiokafka.AIOKafkaConsumer = super()._create_worker_consumer(transport)
        # aiokafka hands the level to its fetcher in start(), which has not run yet.
        consumer._isolation_level = READ_COMMITTED
        return consumer


class InLoopConsumerThread(CommittedReadThread):
    """Faust's consumer "thread" run in the worker's own event loop, not in a thread of its own.

    Faust runs the aiokafka consumer in a second thread with its own loop and hands every call (getmany,
    commit, seek) over through a method queue and `call_soon_threadsafe`. With the agents CPU-bound, that
    thread only contends with them for the GIL, and each hand-over costs a cross-thread wake-up (measured:
    30-40% more drain rate and 40% less CPU per event without it). mode.threads.ServiceThread runs the
    same service on a loop it is given (`thread_loop`); here:
    - `start` runs `ServiceThread._serve` as a task of the worker's loop instead of in a WorkerThread;
    - `call_thread` / `cast_thread` await the call directly (no method queue, which is never started);
    - `_gather_remaining_tasks` does nothing: mode's version cancels every task of `thread_loop`, which here
      are the worker's own tasks.
    A crash in `_serve` still reaches the worker: `_serve` crashes the beacon's root (the worker) itself.
    """

    def __init__(self, consumer: Any, *, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        super().__init__(consumer, loop=loop, thread_loop=loop, **kwargs)
        self._serving: asyncio.Task[None] | None = None

    async def start(self) -> None:
        assert not self._thread_started.is_set()
        self._thread_started.set()
        running = self._thread_running = self.parent_loop.create_future()
        self._serving = self.parent_loop.create_task(self._serve(), name=f"serve-{self.label}")
        self._serving.add_done_callback(_retrieve)
        try:
            if not self.should_stop:
                await asyncio.wait({running, self._serving}, return_when=asyncio.FIRST_COMPLETED)
                if running.done():
                    running.result()  # raises what the start raised
                else:
                    self._serving.result()
        finally:
            self._thread_running = None

    async def on_thread_started(self) -> None:
        pass  # no method queue to start

    async def call_thread(self, fun: Any, *args: Any, **kwargs: Any) -> Any:
        return await maybe_async(fun(*args, **kwargs))

    async def cast_thread(self, fun: Any, *args: Any, **kwargs: Any) -> None:
        await maybe_async(fun(*args, **kwargs))

    async def _gather_remaining_tasks(self) -> None:
        pass


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark the serve task's exception as seen: `_serve` already crashed the worker with it."""
    if not task.cancelled():
        task.exception()


class GaplessConsumer(AIOKafkaFaustConsumer):  # type: ignore[misc]
    def _new_consumer_thread(self) -> CommittedReadThread:
        return InLoopConsumerThread(self, loop=self.loop, beacon=self.beacon)

    # -- batches: the fetch loop -------------------------------------------------------------------

    @property
    def feeds(self) -> dict[str, Feed]:
        feeds: dict[str, Feed] | None = getattr(self, "_feeds", None)
        if feeds is None:
            feeds = {}
            self._feeds = feeds
        return feeds

    def feed(self, topic: str) -> Feed:
        """The feed of `topic`; records of a topic with a feed go only there (one reader per topic)."""
        if topic not in self.feeds:
            self.feeds[topic] = Feed(topic)
        return self.feeds[topic]

    async def _drain_messages(self, fetcher: Any) -> None:
        """Faust's fetch loop (Consumer._drain_messages), by batches for topics with a feed, and without
        ever moving past a record it did not hand over."""
        consumer_stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                records, active = await self._wait_next_records(1.0)
                await asyncio.sleep(0)
                if not records or self.should_stop:
                    continue
                generation = self.app.consumer_generation_id
                for tp, batch in records.items():
                    if batch:
                        await self._hand_over(tp, batch, active, generation)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise

    async def _hand_over(
        self, tp: TP, batch: list[ConsumerRecord[bytes, bytes]], active: set[TP] | None, generation: int
    ) -> None:
        if (
            not self.flow_active
            or self.app.consumer_generation_id != generation
            or (active is not None and tp not in active and tp not in self._buffered_partitions)
        ):
            await self._read_again(tp, batch[0].offset)
            return
        read = self._read_offset.get(tp)
        if read is not None and batch[-1].offset < read:
            return  # fetched before a seek back (Faust drops these as well)
        if read is not None and batch[0].offset > read + 1 and self.app.topics.acks_enabled_for(tp.topic):
            await self._add_gap(tp, read + 1, batch[0].offset)
        feed = self.feeds.get(tp.topic)
        if feed is not None:
            if not recovery_done(self.app):
                # Recovery resumes the agents' partitions, then seeks them to the committed offsets: what is
                # fetched in between would be processed twice.
                await self._read_again(tp, batch[0].offset)
                return
            if not await self._put(feed, Batch(tp, batch, generation)):
                await self._read_again(tp, batch[0].offset)
                return
            self._read_offset[tp] = batch[-1].offset
            self._ack_between(tp, batch)
            return
        callback = self.callback
        for index, record in enumerate(batch):
            message = self._to_message(tp, record)
            await self.wait_first(callback(message), self.suspend_flow.wait())
            if not self.flow_active:  # the callback may not have delivered it: read it again
                await self._read_again(tp, record.offset)
                return
            self._read_offset[tp] = record.offset
            if index % 100 == 99:
                await asyncio.sleep(0)

    def _ack_between(self, tp: TP, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """Ack the offsets between the records of one fetch: aiokafka returned them in a row, so what lies
        between holds no record an agent may read (transaction markers, aborted or compacted records)."""
        previous = records[0].offset
        for record in records[1:]:
            if record.offset > previous + 1:
                self.ack_empty(tp, previous + 1, record.offset)
            previous = record.offset

    async def _put(self, feed: Feed, batch: Batch) -> bool:
        """Queue `batch` for its agent; False when flow stopped first (a rebalance or a recovery)."""
        if self.flow_active and not feed.queue.full():
            feed.queue.put_nowait(batch)  # the usual case, without a race of two futures (19 us, a loop cycle)
            return True
        put = asyncio.ensure_future(feed.queue.put(batch))
        stopped = asyncio.ensure_future(self.suspend_flow.wait())
        try:
            await asyncio.wait({put, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not put.done():
                put.cancel()
        return put.done() and not put.cancelled()

    async def _read_again(self, tp: TP, offset: int) -> None:
        """The fetch moved past records of `tp` from `offset` that no agent got: fetch them again."""
        if tp in self.assignment():
            self._thread.seek(tp, offset)
        # The next record read at or after `offset` is not a gap.
        self._read_offset[tp] = offset - 1 if offset > 0 else None

    async def groups(self, topic: str) -> AsyncIterator[list[Batch]]:
        """The batches of `topic` in the order they were fetched, each time all those queued (at least one):
        a fetch brings one batch per partition, and an agent that works on them together produces and
        waits for acknowledgements once for them all."""
        feed = self.feed(topic)
        queue = feed.queue
        while True:
            # Every batch, of a past generation too: dropping one would leave a gap wherever the rebalance
            # that ended it did not seek its partition back (what aiokafka reports as the assignment is
            # empty while it rejoins). Acks of a partition no longer assigned are never committed.
            group = [await queue.get()]
            while not queue.empty():
                group.append(queue.get_nowait())
            feed.taken.extend(group)
            yield group

    def ack_batch(self, batch: Batch) -> None:
        """The agent is done with `batch` (what it produced is acknowledged): its offsets may be committed."""
        tp = batch.tp
        committed = self._committed_offset.get(tp)
        index, acked = self._acked_index[tp], self._acked[tp]
        for record in batch.records:
            offset = record.offset
            if (committed is None or offset >= committed) and offset not in index:
                index.add(offset)
                acked.append(offset)
        feed = self.feeds.get(tp.topic)
        if feed is not None:
            with contextlib.suppress(ValueError):
                feed.taken.remove(batch)

    # -- what the watchdog reads -----------------------------------------------------------------------

    def committed(self, tp: TP) -> int | None:
        committed: int | None = self._committed_offset.get(tp)
        return committed

    def acked_after(self, tp: TP, offset: int) -> bool:
        """Whether an offset above `offset` of `tp` is acked (while `offset` itself is not committed)."""
        return any(o > offset for o in self._acked.get(tp) or ())

    def in_flight(self, tp: TP, offset: int) -> bool:
        """Whether the record at `offset` is with an agent, not acked yet."""
        if any(feed.holds(tp, offset) for feed in self.feeds.values()):
            return True
        return any(m.tp == tp and m.offset == offset for m in list(self._unacked_messages))

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


class Pipelined:
    """An agent's batches, in groups (`Consumer.groups`), with up to `depth` groups producing at once, acked
    in the order they came.

    The agent works out a group's output (in order: the dedupe table sees each batch after the one before)
    and hands the send to `send`; the next group is worked on while Kafka acknowledges. A group's batches
    are acked only once its send and the sends of every group before it succeeded; a failed send fails the
    agent (its worker exits, nothing after the failure is acked, so it is all read again)."""

    def __init__(self, stream: Any, depth: int = 4) -> None:
        self.consumer = _gapless(stream)
        self.topic: str = stream.channel.get_topic_name()
        self.sending: asyncio.Queue[tuple[list[Batch], asyncio.Future[Any]]] = asyncio.Queue(maxsize=depth)
        self._acker: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Pipelined:
        self._acker = asyncio.create_task(self._ack_in_order(), name=f"{self.topic}-acks")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._acker is not None:
            self._acker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._acker

    async def _ack_in_order(self) -> None:
        while True:
            group, sent = await self.sending.get()
            await sent
            for batch in group:
                self.consumer.ack_batch(batch)

    async def _or_failed(self, step: Any) -> Any:
        """Await `step`, unless acking fails first: then raise that failure."""
        acker = self._acker
        assert acker is not None
        task = asyncio.ensure_future(step)
        try:
            await asyncio.wait({task, acker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
        if acker.done():
            raise acker.exception() or RuntimeError(f"{self.topic}: acking stopped")
        return task.result()

    def _acking(self) -> bool:
        return self._acker is not None and not self._acker.done()

    async def groups(self) -> AsyncIterator[list[Batch]]:
        source = self.consumer.groups(self.topic)
        queued = self.consumer.feed(self.topic).queue
        while True:
            if self._acking() and not queued.empty():
                yield await anext(source)  # batches are queued: taken at once, nothing to wait for
            else:
                yield await self._or_failed(anext(source))

    async def send(self, group: list[Batch], sending: Any) -> None:
        """Queue `sending` (the produce of what `group` caused); its batches are acked once it succeeded."""
        if self._acking() and not self.sending.full():
            self.sending.put_nowait((group, asyncio.ensure_future(sending)))
            return
        await self._or_failed(self.sending.put((group, asyncio.ensure_future(sending))))


def groups(stream: Any) -> AsyncIterator[list[Batch]]:
    """The batch groups of the topic an agent's `stream` reads (the agent ignores the per-event stream)."""
    return _gapless(stream).groups(stream.channel.get_topic_name())


def _gapless(stream: Any) -> GaplessConsumer:
    consumer = stream.app.consumer
    if not isinstance(consumer, GaplessConsumer):
        raise TypeError("batch agents need the app's consumer to be agents.consumer.GaplessConsumer")
    return consumer


def recovery_done(app: AppT) -> bool:
    """Whether Faust finished recovering its tables (it positions the partitions itself until then)."""
    recovery = getattr(getattr(app, "tables", None), "recovery", None)
    completed = getattr(recovery, "completed", None)
    return completed is None or bool(completed.is_set())


def changelog_record(table: Any, key: Any, value: Any) -> tuple[bytes, bytes | None]:
    """Key and value of the changelog record Faust writes for `table[key] = value` (what its recovery reads)."""
    topic = table.changelog_topic
    raw_key, _ = topic.prepare_key(key, table.key_serializer)
    raw_value, _ = topic.prepare_value(value, table.value_serializer)
    return raw_key, raw_value


def persist_changelog_offset(table: Any, partition: int, offset: int) -> None:
    """Record in the table's local store that it holds the changelog up to `offset` of `partition`, as Faust
    does when its own changelog send completes (at-least-once): a restart with this data directory then
    recovers from there instead of from the changelog's beginning."""
    table.data.set_persisted_offset(TP(table.changelog_topic.get_topic_name(), partition), offset)


_PLAIN = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_.:")


class TableStore:
    """A table's local RocksDB store, read and written as raw bytes per partition: the bytes of its changelog
    records, which is what Faust's recovery writes (Store.apply_changelog_batch puts the changelog key and
    value as they are). Skips Faust's per-access encoding, decoding, event context and sensors; the caller
    writes the changelog record itself."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self._store = table.data

    def key(self, key: str) -> bytes:
        """The stored (and changelog) form of a text key: Faust's JSON codec, a JSON string."""
        if key.isascii() and (key.isalnum() or _PLAIN.issuperset(key)):
            return b'"' + key.encode() + b'"'
        return changelog_record(self.table, key, None)[0]

    def writes(self, partition: int) -> PartitionWrites:
        """Reads and buffered writes of one partition, written at once (one RocksDB write batch)."""
        return PartitionWrites(self._store._db_for_partition(partition))


class PartitionWrites:
    """One partition's store for a batch of records: `get` sees the batch's own `put`s; `write` applies them
    in one RocksDB write batch (as Faust's changelog recovery writes), about half the cost of a put each."""

    def __init__(self, db: Any) -> None:
        self._db = db
        self._pending: dict[bytes, bytes] = {}

    def get(self, raw_key: bytes) -> bytes | None:
        pending = self._pending.get(raw_key)
        if pending is not None:
            return pending
        value: bytes | None = self._db.get(raw_key)
        return value

    def put(self, raw_key: bytes, raw_value: bytes) -> None:
        self._pending[raw_key] = raw_value

    def write(self) -> None:
        if self._pending:
            batch = WriteBatch(raw_mode=True)
            for raw_key, raw_value in self._pending.items():
                batch.put(raw_key, raw_value)
            self._db.write(batch)
            self._pending.clear()


def store_of(table: Any) -> Any:
    """The table's local store (RocksDB): reads and writes that bypass its changelog and its sensors."""
    return table.data
