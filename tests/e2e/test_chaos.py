"""Rebalances and crashes under load: two workers, repeated SIGKILLs while events arrive. Faust drops
records around such restarts; the commit rule and the commit watchdog must still get every event through
exactly once (see agents/consumer.py, agents/watchdog.py)."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.events_gen import make_stream
from tests.e2e.test_delivery import (
    DUPLICATES,
    UNIQUE,
    apply_topics,
    assert_exactly_once,
    wait_all_delivered,
    wait_ingest_committed,
)
from tests.support import count_rows, poll, produce

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]


async def test_two_workers_with_repeated_sigkills_while_events_arrive(stack: Stack) -> None:
    """Rebalances under load, again and again: two workers; four waves of events, and after each wave one
    of the workers is SIGKILLed mid-stream and started again with an empty store. Every unique event lands
    exactly once; no duplicate passes dedupe; nothing is left uncommitted."""
    await apply_topics(stack)
    stream = make_stream(UNIQUE, DUPLICATES, stack.partitions, seed=17)
    waves = [stream.messages[i::4] for i in range(4)]
    workers = [stack.worker("a0"), stack.worker("b0")]
    for wave, messages in enumerate(waves):
        await produce(stack.bootstrap, stack.ingest_topic, messages)
        before = await count_rows(stack.dsn, stack.table)
        await poll(
            lambda before=before: count_rows(stack.dsn, stack.table),  # type: ignore[misc]
            lambda n, before=before: n > before,  # type: ignore[misc]
            timeout=120,
            what=f"wave {wave} landing",
        )
        victim = wave % 2
        workers[victim].kill()
        workers[victim] = stack.worker(f"{'ab'[victim]}{wave + 1}")
    await wait_all_delivered(stack, UNIQUE, timeout=240)
    await assert_exactly_once(stack)
    await wait_ingest_committed(stack, timeout=60)
