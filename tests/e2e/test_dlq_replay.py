"""`pipeline dlq replay` against a real worker, broker and PostgreSQL: events dead-lettered by a constraint
the table enforces, replayed while it still fails (they come back with their replay count), the constraint
dropped, a replay SIGKILLed halfway and run again: every event delivered once, the sink topic holding each
replayed event exactly once (read committed), the replay group at the end of the DLQ, a second replay
re-sending nothing."""

from __future__ import annotations

import json
import subprocess
from collections import Counter

import pytest

from pipeline import headers as h
from pipeline.dlq.access import replay_group
from pipeline.dlq.errors import NothingMatched
from pipeline.observability.lag import group_lag
from tests.e2e.conftest import Stack
from tests.e2e.events_gen import event
from tests.support import WorkerProcess, count_rows, fetch, poll, produce, read_topic, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

EVENTS = 20


def dlq(stack: Stack) -> str:
    return f"{stack.prefix}sink.tsdb.dlq"


async def dlq_size(stack: Stack) -> int:
    return len(await read_topic(stack.bootstrap, dlq(stack), committed_only=True))


def replay_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("dlq", "replay", "--sink", "tsdb", "--yes", "--json", *args, env=stack.env(DLQ_REPLAY_MAX="2"))


async def test_replay_after_a_fix_delivers_every_event_once_even_when_killed_halfway(stack: Stack) -> None:
    assert run_cli("topics", "apply", env=stack.env()).returncode == 0
    worker = stack.worker(TSDB_BATCH_SIZE="10")
    await poll(
        lambda: fetch(stack.dsn, "SELECT to_regclass($1) AS t", stack.table),
        lambda rows: rows[0]["t"] is not None,
        timeout=60,
        what="the sink's table",
    )
    await fetch(stack.dsn, f"ALTER TABLE \"{stack.table}\" ADD CONSTRAINT small CHECK ((payload->>'n')::int < 0)")
    await produce(
        stack.bootstrap, stack.ingest_topic, [(None, None, json.dumps(event(n)).encode(), []) for n in range(EVENTS)]
    )
    await poll(lambda: dlq_size(stack), lambda n: n == EVENTS, timeout=120, what="every event dead-lettered")

    # Replayed while the constraint still holds: each comes back to the DLQ with its replay count.
    first = replay_cli(stack)
    assert first.returncode == 0, first.stdout + first.stderr
    assert json.loads(first.stdout.splitlines()[-1])["resent"] == EVENTS
    back = await poll(
        lambda: read_topic(stack.bootstrap, dlq(stack), committed_only=True),
        lambda records: len(records) == 2 * EVENTS,
        timeout=120,
        what="the replayed events dead-lettered again",
    )
    assert [r.headers.get(h.REPLAY_COUNT) for r in back[EVENTS:]] == [b"1"] * EVENTS
    assert all(h.ATTEMPT in r.headers for r in back[EVENTS:])

    # The fix; a replay slowed to 4 events/s is killed once some are committed, then run again.
    await fetch(stack.dsn, f'ALTER TABLE "{stack.table}" DROP CONSTRAINT small')

    async def replayed_twice() -> int:
        records = await read_topic(stack.bootstrap, stack.sink_topic(), committed_only=True)
        return sum(1 for r in records if r.headers.get(h.REPLAY_COUNT) == b"2")

    killed = WorkerProcess(
        stack.env(DLQ_REPLAY_MAX="2"),
        stack.workdir / "replay",
        name="replay",
        module=("pipeline.cli.main", "dlq", "replay", "--sink", "tsdb", "--yes", "--rate", "4"),
    ).start()
    try:
        await poll(replayed_twice, lambda n: n >= 4, timeout=60, what="part of the replay committed")
    finally:
        killed.kill()
    partial = await replayed_twice()
    assert 4 <= partial < EVENTS

    again = replay_cli(stack)
    assert again.returncode == 0, again.stdout + again.stderr
    summary = json.loads(again.stdout.splitlines()[-1])
    assert summary["resent"] == EVENTS - partial and summary["parked"] == summary["failed"] == 0

    sink_records = await read_topic(stack.bootstrap, stack.sink_topic(), committed_only=True)
    counts = Counter(r.key for r in sink_records if r.headers.get(h.REPLAY_COUNT) == b"2")
    assert len(counts) == EVENTS and set(counts.values()) == {1}
    await poll(lambda: count_rows(stack.dsn, stack.table), lambda n: n == EVENTS, timeout=60, what="all rows")
    rows = await fetch(stack.dsn, f"SELECT (payload->>'n')::int AS n FROM \"{stack.table}\"")
    assert sorted(r["n"] for r in rows) == list(range(EVENTS))

    assert await group_lag(stack.bootstrap, replay_group(stack.app_id, "tsdb"), dlq(stack)) == 0
    second = replay_cli(stack)
    assert second.returncode == NothingMatched.exit_code, second.stdout + second.stderr
    assert "no pending event" in second.stderr
    assert len(await read_topic(stack.bootstrap, stack.sink_topic(), committed_only=True)) == len(sink_records)
    assert worker.running
