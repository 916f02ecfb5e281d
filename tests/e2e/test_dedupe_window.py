"""The dedupe window: a copy within IDEMPOTENCY_WINDOW_SEC is dropped; after it, the entry has expired
(removed from the store) and the same event is forwarded again."""

from __future__ import annotations

import asyncio
import json

import pytest

from pipeline.observability.lag import group_lag, topic_size
from tests.e2e.conftest import Stack
from tests.e2e.events_gen import event
from tests.support import count_rows, poll, produce, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


async def test_entries_expire_after_the_window(stack: Stack) -> None:
    stack.extra_env["IDEMPOTENCY_WINDOW_SEC"] = "3"
    assert run_cli("topics", "apply", env=stack.env()).returncode == 0
    worker = stack.worker()
    raw = json.dumps(event(1)).encode()
    by_hash = f"{stack.ingest_topic}.by-hash"

    async def dedupe_drained() -> bool:
        return await group_lag(stack.bootstrap, stack.app_id, by_hash) == 0

    await produce(stack.bootstrap, stack.ingest_topic, [(0, None, raw, [])])
    await poll(lambda: count_rows(stack.dsn, stack.table), lambda n: n == 1, timeout=60, what="first copy")
    await produce(stack.bootstrap, stack.ingest_topic, [(1, None, raw, [])])  # within the window
    await poll(lambda: topic_size(stack.bootstrap, by_hash), lambda n: n == 2, timeout=30)
    await poll(dedupe_drained, bool, timeout=30, what="the copy judged")
    assert await topic_size(stack.bootstrap, stack.sink_topic()) == 1, "a copy within the window is dropped"

    await poll(lambda: asyncio.sleep(0, worker.logged("dedupe entries expired")), bool, timeout=30, what="expiry sweep")
    await produce(stack.bootstrap, stack.ingest_topic, [(2, None, raw, [])])  # after the window
    await poll(lambda: topic_size(stack.bootstrap, stack.sink_topic()), lambda n: n == 2, timeout=30)
    assert await count_rows(stack.dsn, stack.table) == 1  # the sink write stays idempotent
