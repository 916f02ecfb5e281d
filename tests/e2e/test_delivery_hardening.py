"""Delivery when its own topics or its sink's set-up are broken, on a real broker (issue 8, items 5, 7, 13):
an unwritable DLQ pauses the sink without writing good events again; a changed retry policy strands no
event in the old tiers; a sink that cannot open for a fatal reason keeps the worker up and delivers once
fixed; a runner that keeps crashing takes the worker down."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from pipeline.observability.lag import topic_size
from tests.e2e.conftest import Stack
from tests.e2e.events_gen import event
from tests.e2e.test_faults import drained, fast, start, tier_topics
from tests.http_sink_server import Script, http_sink_server
from tests.support import Message, poll, produce, read_topic, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ROUTE_BLOCKED = "retry tier or DLQ cannot be written; delivery paused, the events stay in Kafka"
HTTP_ON = {"TSDB_ENABLED": "false", "HTTP_ENABLED": "true"}


def events(start: int, count: int, poison: frozenset[int] = frozenset()) -> list[Message]:
    out: list[Message] = []
    for n in range(start, start + count):
        body = event(n)
        if n in poison:
            body["payload"] = {"n": n, "poison": True}
        out.append((None, str(n).encode(), json.dumps(body).encode(), []))
    return out


def number(entry: dict[str, Any]) -> int:
    return int(entry["event"]["payload"]["n"])


def rejects_poison(entries: list[dict[str, Any]]) -> int:
    return 400 if any(e["event"]["payload"].get("poison") for e in entries) else 200


def received(script: Script) -> Counter[int]:
    """How many times each event was accepted by the receiver."""
    with script.lock:
        return Counter(number(e) for r in script.received if r.status == 200 for e in r.events)  # type: ignore[arg-type]


async def delete_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()

    async def gone() -> bool:
        probe = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await probe.start()
        try:
            return topic not in await probe.list_topics()
        finally:
            await probe.close()

    await poll(gone, bool, timeout=30, what=f"{topic} deleted")


def logged(stack: Stack, event_name: str) -> Callable[[], Awaitable[list[dict[str, Any]]]]:
    async def probe() -> list[dict[str, Any]]:
        return [line for w in stack.workers for line in w.logged(event_name)]

    return probe


# -- item 5 ------------------------------------------------------------------------------------------


async def test_a_deleted_dlq_pauses_the_sink_and_no_good_event_is_sent_twice(stack: Stack) -> None:
    stack.partitions = 2
    poison = frozenset({3, 13, 23})
    script = Script(status_for=rejects_poison)  # type: ignore[arg-type]
    with http_sink_server(script) as url:
        await start(stack, fast("HTTP"), HTTP_ON, HTTP_URL=url, HTTP_BATCH_SIZE="10")
        worker = stack.worker()
        await poll(logged(stack, "delivery started"), bool, timeout=60, what="delivery started")
        dlq = f"{stack.prefix}sink.http.dlq"
        await delete_topic(stack.bootstrap, dlq)
        await produce(stack.bootstrap, stack.ingest_topic, events(0, 30, poison))

        # The poison events cannot be dead-lettered: the sink pauses and logs an error per backoff period.
        # Good events of those batches were sent once and are not sent again; what follows a poison event
        # in its partition waits in Kafka.
        await poll(
            lambda: asyncio.sleep(0, len(worker.logged(ROUTE_BLOCKED))),
            lambda n: n >= 2,
            timeout=120,
            interval=0.5,
            what="two route-blocked periods",
        )
        good = set(range(30)) - poison
        assert received(script), "the good events before the poison ones were sent"
        assert set(received(script).values()) == {1}, "a good event was sent twice"
        blocked = worker.logged(ROUTE_BLOCKED)
        assert all(line["level"] == "error" and line["sink"] == "http" for line in blocked)
        assert blocked[1]["retry_in_sec"] >= blocked[0]["retry_in_sec"]

        # The DLQ is back: the poison events reach it, and still no good event is sent again.
        result = run_cli("topics", "apply", env=stack.env())
        assert result.returncode == 0, result.stdout + result.stderr
        await poll(lambda: topic_size(stack.bootstrap, dlq), lambda n: n >= 3, timeout=120, what="3 in the DLQ")
        await poll(lambda: drained(stack, "http"), bool, timeout=60, what="http drained")
        assert worker.running
        await poll(lambda: asyncio.sleep(0, set(received(script))), lambda v: v == good, timeout=30, what="all good")
    dead = await read_topic(stack.bootstrap, dlq)
    assert sorted(json.loads(r.value or b"{}")["payload"]["n"] for r in dead) == sorted(poison)
    assert {r.headers["pipeline.error.reason"] for r in dead} == {b"fatal"}
    counts = received(script)
    assert set(counts) == good and set(counts.values()) == {1}


# -- item 7 ------------------------------------------------------------------------------------------


async def test_events_in_a_retry_tier_of_an_earlier_policy_are_delivered(stack: Stack) -> None:
    stack.partitions = 1
    down = [True]
    script = Script(status_for=lambda entries: 503 if down[0] else 200)
    never_open = {"HTTP_FAILURE_THRESHOLD": "100000", "HTTP_MINIMUM_REQUESTS": "100000"}
    old_policy = {"HTTP_INITIAL_BACKOFF_MS": "8000", "HTTP_MAX_BACKOFF_MS": "8000", "HTTP_JITTER_FACTOR": "0"}
    with http_sink_server(script) as url:
        await start(stack, fast("HTTP"), never_open, old_policy, HTTP_ON, HTTP_URL=url)
        (old_tier,) = tier_topics(stack, "http")
        first = stack.worker("first")
        await produce(stack.bootstrap, stack.ingest_topic, events(0, 20))
        await poll(lambda: topic_size(stack.bootstrap, old_tier), lambda n: n >= 20, timeout=90, what="20 in the tier")
        assert first.stop() == 0
        assert not received(script)

        # Another backoff: other tier names. The old tier is listed by `topics plan` and still delivered.
        down[0] = False
        await start(stack, {"HTTP_INITIAL_BACKOFF_MS": "300", "HTTP_MAX_BACKOFF_MS": "300"})
        assert old_tier not in tier_topics(stack, "http")
        plan = run_cli("topics", "plan", env=stack.env())
        waiting = await topic_size(stack.bootstrap, old_tier)
        assert f"orphaned retry tier {old_tier}: {waiting} records waiting" in plan.stdout, plan.stdout + plan.stderr
        stack.worker("second")
        await poll(lambda: asyncio.sleep(0, set(received(script))), lambda v: v == set(range(20)), timeout=90)
    assert await topic_size(stack.bootstrap, f"{stack.prefix}sink.http.dlq") == 0


# -- item 13 -----------------------------------------------------------------------------------------


async def test_a_sink_that_may_not_create_its_table_keeps_the_worker_up_and_delivers_once_allowed(
    stack: Stack,
) -> None:
    role, schema, password = f"r{stack.uid}", f"s{stack.uid}", f"pw-{stack.uid}"
    admin = await asyncpg.connect(stack.dsn)
    try:
        await admin.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        await admin.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')  # no CREATE
        host = stack.dsn.rsplit("@", 1)[1]
        await start(stack, fast(), TSDB_DSN=f"postgresql://{role}:{password}@{host}", TSDB_SCHEMA=schema)
        worker = stack.worker()
        await produce(stack.bootstrap, stack.ingest_topic, events(0, 10))

        failed = await poll(
            logged(stack, "sink open failed"), lambda lines: len(lines) >= 3, timeout=90, what="3 open failures"
        )
        assert all(line["level"] == "error" and line["fatal"] is True for line in failed)
        assert "permission denied" in failed[0]["error"] and password not in json.dumps(failed)
        assert [line["attempt"] for line in failed[:3]] == [1, 2, 3], "counted"
        waits = [line["retry_in_sec"] for line in failed]
        assert waits == sorted(waits) and waits[-1] > waits[0], "with a growing backoff"
        assert worker.running and not worker.logged("delivery keeps crashing; stopping the worker")

        await admin.execute(f'GRANT CREATE ON SCHEMA "{schema}" TO "{role}"')

        async def rows() -> int:
            return int(await admin.fetchval(f'SELECT count(*) FROM "{schema}"."{stack.table}"') or 0)

        async def delivered() -> int:
            exists = await admin.fetchval("SELECT to_regclass($1)", f'"{schema}"."{stack.table}"')
            return 0 if exists is None else await rows()

        await poll(delivered, lambda n: n == 10, timeout=90, what="10 rows once CREATE is granted")
        assert worker.running
        worker.stop()
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


# -- a genuine crash loop ----------------------------------------------------------------------------


CRASHING_WORKER = """
import pipeline.delivery.runner as runner

async def run(self):
    raise RuntimeError("a bug in delivery")

runner.SinkRunner.run = run
from pipeline.cli.main import main
main()
"""


def test_a_runner_that_keeps_crashing_makes_the_worker_exit_non_zero(stack: Stack) -> None:
    """A bug in the runner itself (not a sink failure): restarted, and after 5 crashes in 300 s the worker
    process exits non-zero, so its supervisor restarts it, rather than staying alive delivering nothing."""
    stack.extra_env.update(fast())
    applied = run_cli("topics", "apply", env=stack.env())
    assert applied.returncode == 0, applied.stdout + applied.stderr
    env = {**os.environ, **stack.env(PIPELINE_DATA_DIR=str(stack.workdir / "data"))}
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHING_WORKER, "worker"],
        env=env,
        cwd=stack.workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = output.decode(errors="replace")
    assert proc.returncode not in (0, None), text[-3000:]
    assert text.count("delivery crashed; restarting") == 4, text[-3000:]
    assert "delivery keeps crashing; stopping the worker" in text
