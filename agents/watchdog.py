"""Commit watchdog for the Faust agents (ingest, dedupe).

The commit rule (pipeline.commits, agents.consumer) never passes an offset no agent acked. Two things can
leave an offset unacked without an agent ever seeing it, and the watchdog settles both with the broker:

- Suspected gaps: Faust's fetch loop reports offsets it jumped over. A transaction marker or a compacted
  record is a real gap (the broker returns the next record after it); those offsets are acked as empty
  at once, so transactional producers do not hold the commit back. Skipped records are read again at once.
- Stalls: a commit that has not moved for PROBE_AFTER_SEC while records wait is checked with the
  broker. Offsets without a record up to the next one (a marker at the tail, records deleted by
  retention) are acked as empty at once. A record at the committed offset that Faust never handed to
  an agent while later ones were acked was dropped by its fetch loop (seen when a worker restarts
  after SIGKILL under load): the partition is read again from there at once (the dedupe table
  recognises events already forwarded). Otherwise the record gets STALL_SEC (IN_FLIGHT_STALL_SEC
  while an agent holds it) before the re-read.

The agents read committed records only (agents.consumer), so the records of an aborted transaction are
gaps too; the probe reads committed as well, so it shows them as empty, and it never looks past the last
stable offset, so the records of an open transaction are never acked as empty.

Nothing is skipped; a false alarm only costs a re-read.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from aiokafka.errors import KafkaError

from agents.app import Pipeline
from agents.consumer import GaplessConsumer, recovery_done
from pipeline.observability import metrics
from pipeline.observability.lag import RecordProbe

log = structlog.get_logger("pipeline.watchdog")

CHECK_EVERY_SEC = 5.0
PROBE_AFTER_SEC = 4.0  # a still commit is checked with the broker (cheap: one fetch) ...
STALL_SEC = 15.0  # ... and its partition read again only after this long
IN_FLIGHT_STALL_SEC = 60.0  # or this long when the record is with an agent, not acked yet
PROBE_ERRORS = (TimeoutError, OSError, KafkaError)


def register(pipeline: Pipeline) -> None:
    app = pipeline.app
    kafka = pipeline.settings.kafka
    changelog = pipeline.catalog.dedupe_changelog.name
    probe = RecordProbe(kafka.bootstrap_servers, client_id=f"{kafka.client_id}-watchdog", **kafka.client_kwargs())
    # tp -> (committed offset, when it was first seen at that value)
    seen: dict[Any, tuple[int, float]] = {}
    # tp -> (offset a seek of ours is reading the partition again from, when it started)
    rereads: dict[Any, tuple[int, float]] = {}

    async def reread(consumer: GaplessConsumer, tp: Any, offset: int) -> None:
        await consumer.seek(tp, offset)
        rereads[tp] = (offset, time.monotonic())
        metrics.REREADS.labels(tp.topic).inc()

    async def verify_gaps() -> None:
        consumer: GaplessConsumer = app.consumer  # type: ignore[assignment]
        while True:
            gap = await consumer.suspected_gaps.get()
            tp = gap.tp
            try:
                first = (await probe.first_record(tp.topic, tp.partition, gap.start)).offset
            except Exception as exc:  # the stall check settles it later; never kill the worker
                log.warning("could not check a gap with the broker; the stall check will", error=repr(exc))
                continue
            if first is not None and first >= gap.end:
                consumer.ack_empty(tp, gap.start, gap.end)
                continue
            target = rereads.get(tp, (None, 0.0))[0]
            committed = consumer.committed(tp)
            if target is not None and (committed is None or committed > target or tp not in consumer.assignment()):
                del rereads[tp]  # that re-read is done (or the partition moved on)
            elif target is not None and gap.start >= target:
                continue  # records fetched before that seek: the re-read from `target` covers them
            log.warning(
                "records skipped by the fetch loop; reading the partition again from the first one",
                topic=tp.topic,
                partition=tp.partition,
                first_skipped=first,
                next_seen=gap.end,
            )
            try:
                await reread(consumer, tp, gap.start)
            except Exception as exc:  # revoked meanwhile, or stopping: the stall check settles it later
                log.warning("could not seek back to skipped records", error=repr(exc))

    async def unstick(consumer: GaplessConsumer, tp: Any, committed: int, highwater: int, stalled: float) -> bool:
        """Settle a commit that has not moved for `stalled` seconds; True when it was settled."""
        found = await probe.first_record(tp.topic, tp.partition, committed)
        first = found.offset
        fields = {"topic": tp.topic, "partition": tp.partition, "committed": committed, "highwater": highwater}
        if first == committed:
            # A record is there. Handed to an agent and not acked yet: the agent is slow, wait (a minute at
            # most). Not handed over while later records were acked: Faust skipped it, read it again now.
            # Neither: the fetch loop is slow or skipped it with nothing after; wait STALL_SEC.
            in_flight = consumer.in_flight(tp, committed)
            skipped = not in_flight and consumer.acked_after(tp, committed)
            if time.monotonic() - rereads.get(tp, (None, 0.0))[1] < STALL_SEC:
                skipped = False  # a re-read of ours is under way: give it time to reach the agent
            if not skipped and stalled < (IN_FLIGHT_STALL_SEC if in_flight else STALL_SEC):
                return False
            log.warning(
                "commit stalled on a record never processed; reading the partition again from it",
                stalled_sec=round(stalled, 1),
                in_flight=in_flight,
                **fields,
            )
            await reread(consumer, tp, committed)
            return True
        # Up to the first record, or to the last stable offset: records of an open transaction are not
        # empty, they are not readable yet.
        empty_to = min(highwater, found.end) if first is None else first
        if empty_to <= committed:
            return True  # an open transaction at the head: its records come once it commits
        earliest = (await consumer.earliest_offsets(tp)).get(tp, 0)
        if earliest > committed:
            log.error(
                "records deleted by the topic's retention before they were processed; raise its retention",
                deleted=min(earliest, empty_to) - committed,
                **fields,
            )
        else:
            log.info("commit stalled on offsets without records; acking them as empty", empty_to=empty_to, **fields)
        consumer.ack_empty(tp, committed, empty_to)
        return True

    async def commit_watchdog() -> None:
        consumer: GaplessConsumer = app.consumer  # type: ignore[assignment]
        if not recovery_done(app):
            return  # Faust is recovering tables: it positions the partitions itself
        await consumer.ensure_baselines()
        now = time.monotonic()
        assigned = {tp for tp in consumer.assignment() if tp.topic != changelog}
        for tp in list(seen):
            if tp not in assigned:
                del seen[tp]
        for tp in assigned:
            committed = consumer.committed(tp)
            highwater = consumer.highwater(tp)
            if committed is None or highwater is None or highwater <= committed:
                seen.pop(tp, None)  # caught up (or nothing known yet)
                continue
            last, since = seen.get(tp, (committed, now))
            if last != committed:
                seen[tp] = (committed, now)  # the commit moved: progress
                continue
            seen[tp] = (last, since)
            if now - since < PROBE_AFTER_SEC:
                continue
            try:
                settled = await unstick(consumer, tp, committed, highwater, now - since)
            except PROBE_ERRORS as exc:
                log.warning(
                    "commit watchdog could not probe the broker", topic=tp.topic, partition=tp.partition, error=str(exc)
                )
                settled = True  # try again after a full period
            if settled:
                seen[tp] = (committed, time.monotonic())

    app.timer(CHECK_EVERY_SEC, name="commit-watchdog")(commit_watchdog)
    app.task(verify_gaps)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def _close_probe(sender: Any, **_: Any) -> None:
        await probe.close()
