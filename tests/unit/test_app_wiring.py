"""The worker's Faust app: commits with our rule, not Faust's (its consumer is the GaplessConsumer), reads
committed records only, lets no dead agent leave a live worker, and sizes its producer from the topics.

These are also the contract tests of agents/consumer.py: they fail when the pinned faust-streaming
version changes the internals it overrides."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any, cast

import faust
import mode
import pytest
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaFaustConsumer
from faust.types import TP

from agents.app import Pipeline
from pipeline.config import load_settings
from pipeline.limits import check_limits, producer_request_bytes
from pipeline.topics import load_topics


def build(tmp_path: Path, **env: str) -> Pipeline:
    """The worker's app for a PostgreSQL sink on unreachable addresses (nothing connects), with `env`."""
    from agents.app import build_app

    settings = load_settings(
        environ={
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
            "TSDB_ENABLED": "true",
            "TSDB_DSN": "postgresql://u@127.0.0.1:1/db",
            "PIPELINE_DATA_DIR": str(tmp_path),
            "PIPELINE_CONFIG": "",
            **env,
        }
    )
    catalog = load_topics(settings.topics_path(), settings.topic_vars())
    return build_app(settings, catalog)


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    return build(tmp_path)


def test_the_faust_internals_agents_consumer_overrides_are_still_there() -> None:
    assert faust.__version__.startswith("0.15."), "re-check agents/consumer.py against this faust version"
    assert list(inspect.signature(AIOKafkaConsumerThread._create_worker_consumer).parameters) == ["self", "transport"]
    assert "isolation_level=isolation_level" in inspect.getsource(AIOKafkaConsumerThread._create_worker_consumer)
    assert list(inspect.signature(AIOKafkaFaustConsumer._new_consumer_thread).parameters) == ["self"]
    for name in ("_add_gap", "_new_offset", "perform_seek"):
        assert callable(getattr(AIOKafkaFaustConsumer, name)), name


def test_the_mode_internals_of_the_in_loop_consumer_are_still_there() -> None:
    """agents.consumer.InLoopConsumerThread runs mode's ServiceThread in the worker's loop (mode-streaming 0.7)."""
    from importlib.metadata import version

    from mode.threads import QueueServiceThread, ServiceThread

    assert version("mode-streaming").startswith("0.7."), "re-check InLoopConsumerThread against this mode version"

    serve = inspect.getsource(ServiceThread._serve)
    assert "await self._default_start()" in serve and "notify, self._thread_running" in serve
    # A crash of the consumer still takes the worker down, and the stop still sweeps the loop's tasks.
    assert "self.beacon.root.data.crash(exc)" in serve and "await self._gather_remaining_tasks()" in serve
    assert "all_tasks(loop=self.thread_loop)" in inspect.getsource(ServiceThread._gather_remaining_tasks)
    assert "thread_loop" in inspect.signature(ServiceThread.__init__).parameters
    assert "self._thread_started.set()" in inspect.getsource(ServiceThread.start)
    assert "method_queue.start()" in inspect.getsource(QueueServiceThread.on_thread_started)
    for name in ("call_thread", "cast_thread"):
        assert list(inspect.signature(getattr(QueueServiceThread, name)).parameters) == [
            "self",
            "fun",
            "args",
            "kwargs",
        ]
    # Faust reaches its aiokafka consumer only through call_thread.
    for name in ("commit", "seek_to_committed", "subscribe", "position", "highwaters", "earliest_offsets"):
        assert "self.call_thread(" in inspect.getsource(getattr(AIOKafkaConsumerThread, name)), name


def test_the_app_consumer_runs_in_the_worker_loop(pipeline: Pipeline) -> None:
    from agents.consumer import InLoopConsumerThread

    thread = pipeline.app.consumer._thread  # type: ignore[attr-defined]
    assert isinstance(thread, InLoopConsumerThread)
    assert thread.thread_loop is thread.parent_loop is pipeline.app.loop


async def test_the_app_consumer_reads_committed_records_only(pipeline: Pipeline) -> None:
    app_consumer: Any = pipeline.app.consumer
    thread = app_consumer._thread
    consumer = thread._create_worker_consumer(pipeline.app.transport)
    try:
        assert consumer._isolation_level == "read_committed"
    finally:
        await consumer.stop()


def test_every_agent_takes_the_worker_down_when_it_dies(pipeline: Pipeline) -> None:
    # With Faust's default (OneForOneSupervisor) a crashed agent's service is "restarted" without its
    # coroutine: a live worker that consumes nothing. Tasks and timers crash the app on their own.
    supervisor: Any = pipeline.app.conf.agent_supervisor
    assert supervisor is mode.CrashingSupervisor
    agents = list(pipeline.app.agents.values())
    assert {a.name.rsplit(".", 1)[-1] for a in agents} >= {"ingest", "dedupe"}
    for agent in agents:
        assert agent._get_supervisor_strategy() is mode.CrashingSupervisor, agent.name


def test_the_producer_sends_what_the_topics_take(pipeline: Pipeline) -> None:
    check_limits(pipeline.settings.max_event_bytes, pipeline.catalog)
    assert pipeline.app.conf.producer_max_request_size == producer_request_bytes(pipeline.catalog)
    assert producer_request_bytes(pipeline.catalog) > pipeline.settings.max_event_bytes + 65_536


async def test_the_app_consumer_commits_only_over_acked_offsets(pipeline: Pipeline) -> None:
    from agents.consumer import GaplessConsumer

    catalog = pipeline.catalog
    consumer = pipeline.app.consumer
    assert isinstance(consumer, GaplessConsumer)
    tp = TP(catalog.ingest.name, 0)
    # Faust's rule would commit 13 here, past the unacked offset 10.
    consumer._committed_offset[tp] = 10
    consumer._acked[tp] = [12, 11]
    consumer._acked_index[tp] = {11, 12}
    assert consumer._new_offset(tp) is None
    consumer._acked[tp].append(10)
    consumer._acked_index[tp].add(10)
    assert consumer._new_offset(tp) == 13
    assert consumer._acked[tp] == [] and consumer._acked_index[tp] == set()


def test_the_faust_internals_of_the_batch_fetch_loop_are_still_there() -> None:
    """agents/consumer.py replaces Consumer._drain_messages and reads these internals (faust-streaming 0.15)."""
    from faust.streams import _current_event, current_event
    from faust.tables.recovery import Recovery
    from faust.transport.consumer import Consumer as BaseConsumer

    drain = inspect.getsource(BaseConsumer._drain_messages)
    # The loop it replaces: if Faust stops dropping the in-flight message on a flow stop, re-check ours.
    assert "self.wait_first(" in drain and "self.suspend_flow.wait()" in drain
    assert "set_read_offset(tp, offset)" in drain
    assert list(inspect.signature(BaseConsumer._wait_next_records).parameters) == ["self", "timeout"]
    assert list(inspect.signature(AIOKafkaFaustConsumer._to_message).parameters) == ["self", "tp", "record"]
    add_gap = inspect.signature(AIOKafkaFaustConsumer._add_gap)
    assert list(add_gap.parameters) == ["self", "tp", "offset_from", "offset_to"]
    assert list(inspect.signature(AIOKafkaConsumerThread.seek).parameters) == ["self", "partition", "offset"]
    init = inspect.getsource(BaseConsumer.__init__) + inspect.getsource(BaseConsumer._reset_state)
    for attribute in ("_read_offset", "_committed_offset", "_acked", "_acked_index", "_unacked_messages"):
        assert f"self.{attribute}" in init, attribute
    assert "_buffered_partitions" in inspect.getsource(BaseConsumer.getmany)
    assert "consumer_stopped_errors" in drain
    assert "current_event" in inspect.getsource(current_event) and _current_event.name == "current_event"
    from faust.stores.rocksdb import Store as RocksDBStore
    from faust.tables.base import Collection

    # What the dedupe agent does in place of Faust's changelog send callback (agents.consumer).
    assert "self.data.set_persisted_offset(res.topic_partition, res.offset)" in inspect.getsource(
        Collection._on_changelog_sent
    )
    assert list(inspect.signature(RocksDBStore.set_persisted_offset).parameters) == ["self", "tp", "offset"]
    assert "current_event()" in inspect.getsource(RocksDBStore._set)
    assert "self.completed" in inspect.getsource(Recovery._resume_streams)
    assert "perform_seek" in inspect.getsource(Recovery._resume_streams)


async def test_changelog_records_and_raw_table_writes_match_fausts(pipeline: Pipeline) -> None:
    """The dedupe agent writes the table's RocksDB and its changelog with bytes of its own: they must be what
    Faust's own Table writes and what its recovery and its decoded store API read."""
    from agents.consumer import TableStore, changelog_record, store_of
    from pipeline.dedupe import Seen

    table: Any = pipeline.app.tables["dedupe"]
    store = TableStore(table)
    for key in ("ab" * 32, "AB09" * 16, "Odd key é\"'", "é" * 4, "k-1:2", "a b"):
        raw_key, _ = changelog_record(table, key, None)
        assert store.key(key) == raw_key  # the fast path gives Faust's JSON codec's bytes
    key, seen = "cd" * 32, Seen(1, 2, 3)
    raw_key, raw_value = changelog_record(table, key, seen.to_json())
    assert raw_key == b'"' + key.encode() + b'"'
    assert raw_value is not None and Seen.from_bytes(raw_value) == seen
    writes = store.writes(2)
    writes.put(store.key(key), seen.to_bytes())
    assert Seen.from_bytes(writes.get(store.key(key))) == seen  # the batch sees its own writes
    decoded = store_of(table)
    assert decoded.get(key) is None  # nothing in RocksDB before the write batch
    writes.write()
    assert Seen.from_bytes(store.writes(2).get(store.key(key))) == seen
    assert store.writes(1).get(store.key(key)) is None  # partition 2's RocksDB only
    assert Seen.from_json(decoded.get(key)) == seen  # the expiry timer's view (Faust's decoding)
    assert decoded.pop(key, None) is not None and store.writes(2).get(store.key(key)) is None


class _Thread:
    """Stands in for Faust's consumer thread: records seeks."""

    def __init__(self, tp: TP) -> None:
        self.tp = tp
        self.seeks: list[tuple[TP, int]] = []

    def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))

    def assignment(self) -> set[TP]:
        return {self.tp}


def _records(tp: TP, offsets: list[int]) -> list[Any]:
    from aiokafka.structs import ConsumerRecord

    return [ConsumerRecord(tp.topic, tp.partition, o, 0, 0, b"k", b"v", None, 1, 1, []) for o in offsets]


async def test_the_fetch_loop_hands_a_batch_over_or_reads_it_again_never_drops_it(pipeline: Pipeline) -> None:
    """Faust's loop sets the read offset of a message it could not deliver when flow stops; ours seeks the
    partition back to the batch's first record, and acks the transaction markers between records at once."""
    from agents.consumer import GaplessConsumer

    consumer: Any = pipeline.app.consumer
    assert isinstance(consumer, GaplessConsumer)
    tp = TP(pipeline.catalog.ingest.name, 0)
    thread = _Thread(tp)
    consumer._thread = cast(Any, thread)
    consumer._committed_offset[tp] = 0
    generation = pipeline.app.consumer_generation_id
    tables: Any = pipeline.app.tables
    tables.recovery.completed.set()
    feed = consumer.feed(tp.topic)

    consumer.stop_flow()  # a rebalance or a recovery starts
    await consumer._hand_over(tp, _records(tp, [0, 1, 2]), None, generation)
    assert thread.seeks == [(tp, 0)] and feed.queue.empty()

    consumer.resume_flow()
    await consumer._hand_over(tp, _records(tp, [0, 1, 2, 4, 7]), None, generation)  # 3, 5, 6: markers
    batch = feed.queue.get_nowait()
    assert [r.offset for r in batch.records] == [0, 1, 2, 4, 7] and consumer._read_offset[tp] == 7
    consumer.ack_batch(batch)
    assert consumer._new_offset(tp) == 8

    from agents.consumer import FEED_DEPTH

    for _ in range(FEED_DEPTH):  # the agent is busy: the feed is full
        await consumer._hand_over(tp, _records(tp, [8]), None, generation)
    full = asyncio.ensure_future(consumer._hand_over(tp, _records(tp, [9, 10]), None, generation))
    await asyncio.sleep(0.01)
    consumer.stop_flow()  # while the fetch loop waits for room
    await full
    assert thread.seeks[-1] == (tp, 9) and feed.queue.qsize() == FEED_DEPTH


async def test_a_batch_goes_from_the_fetch_to_its_send_without_waiting_a_loop_cycle(pipeline: Pipeline) -> None:
    """With room in the feed and in the send queue, handing a batch over, taking it as a group and queueing
    its send each complete at once: under load every loop cycle waited for is a few ms more per hop (at
    8,335 ev/s the ingest and dedupe hops' p50 fell from 87-270 to 50-54 ms without the two-future races)."""
    from types import SimpleNamespace

    from agents.consumer import GaplessConsumer, Pipelined

    consumer: Any = pipeline.app.consumer
    assert isinstance(consumer, GaplessConsumer)
    tp = TP(pipeline.catalog.ingest.name, 1)
    consumer._thread = cast(Any, _Thread(tp))
    consumer._committed_offset[tp] = 0
    tables: Any = pipeline.app.tables
    tables.recovery.completed.set()
    stream = SimpleNamespace(app=pipeline.app, channel=SimpleNamespace(get_topic_name=lambda: tp.topic))
    loop = asyncio.get_running_loop()
    cycles = 0

    def cycle() -> None:
        nonlocal cycles
        cycles += 1

    async def sending() -> None:
        pass

    consumer.feed(tp.topic)
    async with Pipelined(stream) as pipe:
        groups = pipe.groups()
        await asyncio.sleep(0)  # the acker runs
        loop.call_soon(cycle)
        await consumer._hand_over(tp, _records(tp, [0, 1]), None, pipeline.app.consumer_generation_id)
        group = await anext(groups)
        await pipe.send(group, sending())
        assert cycles == 0, "a step waited for a loop cycle"
        assert [r.offset for b in group for r in b.records] == [0, 1]


def test_dedupe_standby_replicas_reach_faust(tmp_path: Path) -> None:
    assert build(tmp_path).app.conf.table_standby_replicas == 0
    for given in (1, 2):
        app = build(tmp_path / str(given), DEDUPE_STANDBY_REPLICAS=str(given)).app
        assert app.conf.table_standby_replicas == given


async def test_an_agent_gets_every_queued_batch_as_one_group_acked_only_after_its_send(pipeline: Pipeline) -> None:
    from types import SimpleNamespace

    from agents.consumer import Batch, GaplessConsumer, Pipelined

    consumer: Any = pipeline.app.consumer
    assert isinstance(consumer, GaplessConsumer)
    topic = pipeline.catalog.ingest.name
    tps = [TP(topic, p) for p in range(3)]
    for tp in tps:
        consumer._committed_offset[tp] = 0
    feed = consumer.feed(topic)
    for tp in tps:  # one fetch: a batch per partition
        feed.queue.put_nowait(Batch(tp, _records(tp, [0, 1]), 1))
    stream = SimpleNamespace(app=pipeline.app, channel=SimpleNamespace(get_topic_name=lambda: topic))
    release = asyncio.Event()

    async def sending() -> None:
        await release.wait()

    async with Pipelined(stream) as pipe:
        groups = pipe.groups()
        group = await anext(groups)
        assert [b.tp for b in group] == tps and feed.queue.empty()
        assert all(feed.holds(tp, 1) for tp in tps)  # with the agent: the watchdog sees them in flight
        await pipe.send(group, sending())
        await asyncio.sleep(0.01)
        assert all(consumer._new_offset(tp) is None for tp in tps)  # not acked before the send succeeded
        release.set()
        for _ in range(100):
            if not feed.taken:
                break
            await asyncio.sleep(0.01)
        assert [consumer._new_offset(tp) for tp in tps] == [2, 2, 2]

        feed.queue.put_nowait(Batch(tps[0], _records(tps[0], [2]), 1))
        failed = await anext(groups)

        async def broken() -> None:
            raise RuntimeError("produce failed")

        with pytest.raises(RuntimeError, match="produce failed"):  # the agent fails: its worker exits
            await pipe.send(failed, broken())
            await anext(groups)
    assert consumer._new_offset(tps[0]) is None


def test_the_compression_setting_reaches_fausts_producer(tmp_path: Path) -> None:
    assert build(tmp_path).app.conf.producer_compression_type is None
    assert build(tmp_path / "zstd", KAFKA_COMPRESSION_TYPE="zstd").app.conf.producer_compression_type == "zstd"
