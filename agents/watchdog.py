"""Commit watchdog for the Faust agents (ingest, dedupe).

Our agents ack every event they receive, in order, once what it caused is durable. So on a partition
the acked offsets always run on from the committed offset. If Faust ever loses the event AT the
committed offset (seen under load when a worker restarts after SIGKILL and recovers its table), every
later ack piles up behind it and the partition's commit never moves again. The watchdog notices a head
gap that persists and seeks that partition back to its committed offset: the events are read again,
the dedupe table recognises the ones already forwarded, and the commit moves on. Nothing is skipped.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from agents.app import Pipeline

log = structlog.get_logger("pipeline.watchdog")

CHECK_EVERY_SEC = 5.0
STALL_SEC = 20.0


def register(pipeline: Pipeline) -> None:
    app = pipeline.app
    changelog = pipeline.catalog.dedupe_changelog.name
    first_seen: dict[tuple[Any, int], float] = {}

    async def commit_watchdog() -> None:
        consumer: Any = app.consumer
        acked_by_tp = getattr(consumer, "_acked", None)
        committed_by_tp = getattr(consumer, "_committed_offset", None)
        if acked_by_tp is None or committed_by_tp is None:
            return
        now = time.monotonic()
        stalled_now: set[tuple[Any, int]] = set()
        for tp in list(consumer.assignment()):
            if tp.topic == changelog:
                continue
            acked = acked_by_tp.get(tp)
            committed = committed_by_tp.get(tp)
            if not acked or committed is None or min(acked) <= committed:
                continue
            key = (tp, committed)
            stalled_now.add(key)
            since = first_seen.setdefault(key, now)
            if now - since < STALL_SEC:
                continue
            log.warning(
                "commit stalled behind a lost event; reading the partition again",
                topic=tp.topic,
                partition=tp.partition,
                committed=committed,
                first_acked=min(acked),
                stalled_sec=round(now - since, 1),
            )
            await consumer.seek(tp, committed)
            first_seen.pop(key, None)
        for key in set(first_seen) - stalled_now:
            first_seen.pop(key, None)

    app.timer(CHECK_EVERY_SEC, name="commit-watchdog")(commit_watchdog)
