"""Commit watchdog for the Faust agents (ingest, dedupe).

Our agents ack every event they receive, in order, once what it caused is durable, and they only
produce to Kafka, so their commits move every second while there is work. If Faust ever fails to hand
some events to an agent (seen under load when a worker restarts after SIGKILL and recovers its table),
the partition's commit stops moving while its high-water mark is ahead. The watchdog notices a commit
that has not moved for STALL_SEC with events waiting, and seeks that partition back to its committed
offset: the events are read again (the dedupe table recognises the ones already forwarded), and the
commit moves on. Nothing is skipped; a false alarm only costs a re-read.
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
    # tp -> (committed offset, when it was first seen at that value)
    seen: dict[Any, tuple[int, float]] = {}

    async def commit_watchdog() -> None:
        consumer: Any = app.consumer
        committed_by_tp = getattr(consumer, "_committed_offset", None)
        recovery = getattr(getattr(app, "tables", None), "recovery", None)
        completed = getattr(recovery, "completed", None)
        if committed_by_tp is None or (completed is not None and not completed.is_set()):
            return  # Faust is recovering tables: it positions the partitions itself
        now = time.monotonic()
        assigned = {tp for tp in consumer.assignment() if tp.topic != changelog}
        for tp in list(seen):
            if tp not in assigned:
                del seen[tp]
        for tp in assigned:
            committed = committed_by_tp.get(tp)
            highwater = consumer.highwater(tp)
            if committed is None or highwater is None or highwater <= committed:
                seen.pop(tp, None)  # caught up (or nothing known yet)
                continue
            last, since = seen.get(tp, (committed, now))
            if last != committed:
                seen[tp] = (committed, now)  # the commit moved: progress
                continue
            seen[tp] = (last, since)
            if now - since < STALL_SEC:
                continue
            acked = getattr(consumer, "_acked", {}).get(tp) or []
            log.warning(
                "commit stalled; reading the partition again from its committed offset",
                topic=tp.topic,
                partition=tp.partition,
                committed=committed,
                highwater=highwater,
                first_acked=min(acked) if acked else None,
                stalled_sec=round(now - since, 1),
            )
            await consumer.seek(tp, committed)
            seen[tp] = (committed, now)

    app.timer(CHECK_EVERY_SEC, name="commit-watchdog")(commit_watchdog)
