"""Ingest -> dedupe -> PostgreSQL on a real broker and a real database: exact counts through normal
operation, a SIGKILL in the middle of the stream, and a second worker joining (rebalance)."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from pipeline import headers as h
from pipeline.observability.lag import group_lag, topic_size
from tests.e2e.conftest import Stack
from tests.e2e.events_gen import event, make_stream
from tests.support import count_rows, delete_records, fetch, poll, produce, read_topic, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

UNIQUE, DUPLICATES = 7000, 3000
REREAD_STALLED = "commit stalled on a record never processed; reading the partition again from it"
REREAD_SKIPPED = "records skipped by the fetch loop; reading the partition again from the first one"


async def apply_topics(stack: Stack) -> None:
    result = run_cli("topics", "apply", env=stack.env())
    assert result.returncode == 0, result.stdout + result.stderr


async def wait_all_delivered(stack: Stack, expected_rows: int, timeout: float = 180) -> None:
    async def progress() -> tuple[int, int | None, int | None]:
        rows = await count_rows(stack.dsn, stack.table)
        dedupe_lag = await group_lag(stack.bootstrap, stack.app_id, f"{stack.ingest_topic}.by-hash")
        sink_lag = await group_lag(stack.bootstrap, f"{stack.app_id}.deliver.tsdb", stack.sink_topic())
        return rows, dedupe_lag, sink_lag

    try:
        await poll(progress, lambda v: v == (expected_rows, 0, 0), timeout=timeout, what="all events delivered")
    except AssertionError:
        for worker in stack.workers:
            print(f"--- {worker.name} ---\n{worker.tail()}")
        raise


async def wait_ingest_committed(stack: Stack, timeout: float) -> None:
    await poll(
        lambda: group_lag(stack.bootstrap, stack.app_id, stack.ingest_topic),
        lambda lag: lag == 0,
        timeout=timeout,
        what="the ingest commit at the end of the topic",
    )


async def assert_exactly_once(stack: Stack) -> list[object]:
    """Rows: exactly the unique events. Sink topic: every hash forwarded from ONE ingest record
    (a redelivered record may be forwarded twice after a crash; a duplicate never is)."""
    rows = await fetch(stack.dsn, f"SELECT (payload->>'n')::int AS n FROM \"{stack.table}\"")
    assert sorted(r["n"] for r in rows) == list(range(UNIQUE))
    records = await read_topic(stack.bootstrap, stack.sink_topic())
    origins: dict[bytes | None, set[tuple[bytes, bytes]]] = defaultdict(set)
    for record in records:
        origins[record.key].add((record.headers[h.ORIGIN_PARTITION], record.headers[h.ORIGIN_OFFSET]))
    assert len(origins) == UNIQUE
    leaked = {key: o for key, o in origins.items() if len(o) > 1}
    assert not leaked, f"{len(leaked)} duplicates passed dedupe, e.g. {next(iter(leaked.items()))}"
    assert await topic_size(stack.bootstrap, f"{stack.ingest_topic}.dlq") == 0
    return list(records)


async def test_ten_thousand_events_with_three_thousand_duplicates(stack: Stack) -> None:
    await apply_topics(stack)
    stream = make_stream(UNIQUE, DUPLICATES, stack.partitions)
    await produce(stack.bootstrap, stack.ingest_topic, stream.messages)
    worker = stack.worker()
    await wait_all_delivered(stack, UNIQUE)
    records = await assert_exactly_once(stack)
    by_hash = await topic_size(stack.bootstrap, f"{stack.ingest_topic}.by-hash")
    rereads = worker.logged(REREAD_STALLED) + worker.logged(REREAD_SKIPPED)
    if not rereads:
        # No crash, no rebalance, no re-read: every unique event forwarded exactly once.
        assert len(records) == UNIQUE
        assert by_hash == UNIQUE + DUPLICATES
    else:
        # Faust dropped records at start-up and the watchdog read them again: what it forwarded twice
        # are redeliveries of the same ingest record (assert_exactly_once checked their origins).
        assert len(records) >= UNIQUE and by_hash >= UNIQUE + DUPLICATES


async def test_sigkill_mid_stream_then_restart_with_an_empty_store(stack: Stack) -> None:
    await apply_topics(stack)
    stream = make_stream(UNIQUE, DUPLICATES, stack.partitions, seed=11)
    await produce(stack.bootstrap, stack.ingest_topic, stream.messages)
    # Its writes are held to 1,000 events/s, so that the kill falls mid-stream however fast the host (an
    # unthrottled worker could write all 7,000 rows between two polls).
    first = stack.worker("first", TSDB_MAX_EVENTS_PER_SEC="1000")
    rows_at_kill = await poll(
        lambda: count_rows(stack.dsn, stack.table), lambda n: n >= 1500, timeout=120, what="first rows"
    )
    first.kill()
    rows_after_kill = await count_rows(stack.dsn, stack.table)
    assert rows_after_kill < UNIQUE, "the worker finished before it was killed; the test proves nothing"
    # A new data dir: the dedupe table must come back from its changelog topic, not from local RocksDB.
    stack.worker("second")
    await wait_all_delivered(stack, UNIQUE)
    await assert_exactly_once(stack)
    assert rows_at_kill >= 1500


async def test_second_worker_joins_halfway(stack: Stack) -> None:
    await apply_topics(stack)
    stream = make_stream(UNIQUE, DUPLICATES, stack.partitions, seed=13)
    # The second part is produced only once the second worker is starting, so the stream spans the
    # rebalance whatever the first worker's speed (it may drain the first part before the second joins).
    half = len(stream.messages) // 2
    await produce(stack.bootstrap, stack.ingest_topic, stream.messages[:half])
    first = stack.worker("first")
    await poll(lambda: count_rows(stack.dsn, stack.table), lambda n: n >= 1500, timeout=120, what="first rows")
    second = stack.worker("second")
    await produce(stack.bootstrap, stack.ingest_topic, stream.messages[half:])
    await wait_all_delivered(stack, UNIQUE)
    await assert_exactly_once(stack)

    async def assignments() -> tuple[int, int]:
        return len(first.logged("partitions assigned")), len(second.logged("partitions assigned"))

    await poll(assignments, lambda a: a[0] >= 2 and a[1] >= 1, timeout=30, what="a rebalance")
    shares = [w.logged("partitions assigned")[-1]["assigned"] for w in (first, second)]
    by_hash = f"{stack.ingest_topic}.by-hash"
    assert all(share.get(by_hash) for share in shares), f"both workers should own by-hash partitions: {shares}"


async def test_transactional_producers_markers_do_not_hold_the_commit_back(stack: Stack) -> None:
    """Each committed transaction leaves a control record (an offset with no event) in the ingest topic.
    The commit rule never passes an offset no agent acked, so the watchdog must prove each marker empty
    with the broker; the ingest commit reaches the end quickly, not one marker per stall period."""
    from aiokafka import AIOKafkaProducer

    await apply_topics(stack)
    stack.worker()
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, transactional_id=f"tx-{stack.uid}")
    await producer.start()
    try:
        for batch in range(40):
            async with producer.transaction():
                for n in range(batch * 10, batch * 10 + 10):
                    await producer.send(stack.ingest_topic, key=str(n).encode(), value=json.dumps(event(n)).encode())
    finally:
        await producer.stop()
    await wait_all_delivered(stack, 400, timeout=90)
    # 40 markers spread over the partitions: waiting for each one to stall (15 s) would take minutes.
    await wait_ingest_committed(stack, timeout=45)


async def test_records_deleted_by_retention_before_processing_are_reported_and_passed(stack: Stack) -> None:
    """A worker down longer than the ingest topic's retention: the records it never read are gone. The commit
    must move past them (not stall forever) and the worker must say loudly that they were deleted."""
    from aiokafka import TopicPartition

    await apply_topics(stack)
    first = stack.worker("first")
    await produce(
        stack.bootstrap, stack.ingest_topic, [(0, None, json.dumps(event(n)).encode(), []) for n in range(20)]
    )
    await wait_all_delivered(stack, 20, timeout=90)
    await wait_ingest_committed(stack, timeout=30)
    first.stop()
    await produce(
        stack.bootstrap, stack.ingest_topic, [(0, None, json.dumps(event(n)).encode(), []) for n in range(20, 50)]
    )
    # "Retention": the first 10 records written while the worker was down are deleted unread.
    await delete_records(stack.bootstrap, {TopicPartition(stack.ingest_topic, 0): 30})
    second = stack.worker("second")
    await wait_all_delivered(stack, 40, timeout=90)
    await poll(
        lambda: group_lag(stack.bootstrap, stack.app_id, stack.ingest_topic),
        lambda lag: lag == 0,
        timeout=45,
        what="commit",
    )
    rows = await fetch(stack.dsn, f"SELECT (payload->>'n')::int AS n FROM \"{stack.table}\"")
    assert sorted(r["n"] for r in rows) == [*range(20), *range(30, 50)]
    reports = second.logged("records deleted by the topic's retention before they were processed; raise its retention")
    assert reports and reports[0]["deleted"] == 10, second.tail()


async def test_a_worker_leaving_hands_its_partitions_and_dedupe_state_to_the_other(stack: Stack) -> None:
    """Scale-in: two workers share the partitions; one stops (SIGTERM, as Kubernetes scales down). The
    other takes its partitions and their dedupe table (restored from the changelog): copies of the first
    wave's events sent after the leave are dropped as duplicates, new events are delivered, every row
    once."""
    await apply_topics(stack)
    first_wave = 600
    await produce(stack.bootstrap, stack.ingest_topic, make_stream(first_wave, 0, stack.partitions, seed=17).messages)
    leaving, staying = stack.worker("leaving"), stack.worker("staying")

    async def both_own_partitions() -> int:
        return sum(
            1
            for w in (leaving, staying)
            if w.logged("partitions assigned")
            and w.logged("partitions assigned")[-1]["assigned"].get(f"{stack.ingest_topic}.by-hash")
        )

    await poll(both_own_partitions, lambda n: n == 2, timeout=120, what="both workers own by-hash partitions")
    await wait_all_delivered(stack, first_wave)
    assert leaving.stop() == 0, leaving.tail()

    # The same events again, spelt differently, plus new ones.
    again = make_stream(first_wave, 0, stack.partitions, seed=18).messages
    new = make_stream(UNIQUE + 400, 0, stack.partitions, seed=19).messages  # events 0..UNIQUE+399 spelt anew
    fresh = [m for m in new if json.loads(m[2] or b"{}")["payload"]["n"] >= UNIQUE]
    await produce(stack.bootstrap, stack.ingest_topic, again + fresh)
    await wait_all_delivered(stack, first_wave + 400)
    records = await read_topic(stack.bootstrap, stack.sink_topic())
    origins: dict[bytes | None, set[tuple[bytes, bytes]]] = defaultdict(set)
    for record in records:
        origins[record.key].add((record.headers[h.ORIGIN_PARTITION], record.headers[h.ORIGIN_OFFSET]))
    assert len(origins) == first_wave + 400
    leaked = {key: o for key, o in origins.items() if len(o) > 1}
    assert not leaked, f"{len(leaked)} copies sent after the leave passed dedupe: the table state was lost"
    assert await count_rows(stack.dsn, stack.table) == first_wave + 400
