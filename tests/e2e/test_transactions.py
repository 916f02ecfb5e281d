"""Events of an aborted producer transaction never reach a sink: the agents read committed records only.
The aborted records and the transaction markers become gaps that the commit watchdog acks as empty, so
every group's commit still reaches the end of its topics."""

from __future__ import annotations

import json

import pytest
from aiokafka import AIOKafkaProducer

from pipeline.observability.lag import group_lag
from tests.e2e.conftest import Stack
from tests.e2e.events_gen import event
from tests.support import count_rows, fetch, poll, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

PER_TRANSACTION = 20


async def test_aborted_transactions_never_reach_a_sink(stack: Stack) -> None:
    assert run_cli("topics", "apply", env=stack.env()).returncode == 0
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, transactional_id=f"t{stack.uid}-tx")
    await producer.start()
    try:
        n = 0
        for outcome in ("committed", "aborted", "committed", "aborted", "committed"):
            await producer.begin_transaction()
            for _ in range(PER_TRANSACTION):
                body = {**event(n), "source": outcome}
                await producer.send_and_wait(
                    stack.ingest_topic, json.dumps(body).encode(), partition=n % stack.partitions
                )
                n += 1
            if outcome == "committed":
                await producer.commit_transaction()
            else:
                await producer.abort_transaction()
    finally:
        await producer.stop()
    committed = 3 * PER_TRANSACTION
    worker = stack.worker()

    async def progress() -> tuple[int, int | None, int | None, int | None]:
        return (
            await count_rows(stack.dsn, stack.table),
            await group_lag(stack.bootstrap, stack.app_id, stack.ingest_topic),
            await group_lag(stack.bootstrap, stack.app_id, f"{stack.ingest_topic}.by-hash"),
            await group_lag(stack.bootstrap, f"{stack.app_id}.deliver.tsdb", stack.sink_topic()),
        )

    try:
        await poll(progress, lambda v: v == (committed, 0, 0, 0), timeout=120, what="committed events delivered")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- worker log ---\n{worker.tail()}") from None
    rows = await fetch(stack.dsn, f"SELECT source, count(*) AS n FROM {stack.table} GROUP BY source")
    assert {r["source"]: r["n"] for r in rows} == {"committed": committed}
