"""Exactly-once replay of a DLQ.

The replay has its own consumer group and transactional id, `<app_id>.dlq-replay.<sink>`, reads committed
records only, and commits its re-sends and its DLQ offsets in one transaction per batch
(send_offsets_to_transaction). So:

- a replay killed at any point and run again re-sends nothing twice and misses nothing: starting the
  transactional producer aborts the killed run's open transaction, and the new run starts from the offsets
  the last committed transaction wrote; a second replay of the same DLQ re-sends nothing;
- two replays of one DLQ at once cannot both commit: the later one fences the earlier.

One run covers the DLQ as it was when the run started (later arrivals wait for the next run), and ends
after the last matching event (or after `limit` matches), so its offset stays where it was past that.

Events the filters skip are left for a later replay: inside the same transaction they are copied to the
end of the DLQ (key, value, headers, timestamp unchanged) before the offset moves past them, so they stay
pending and show in stats, inspect and the next replay. The copy below the replay offset is what retention
or `purge` removes later.

Re-sent events carry `pipeline.replay.count` (+1 per replay) and start their retry budget anew (the
retry and error headers of the failure are dropped); an event that fails again returns to the DLQ with its
count (the delivery code keeps headers it does not set). An event replayed DLQ_REPLAY_MAX times already is
not re-sent: it goes to the parking topic (`sink.<name>.parked`) with `pipeline.parked.reason`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from aiokafka import AIOKafkaProducer, TopicPartition

from pipeline import headers as h
from pipeline.config import Settings
from pipeline.dlq import access
from pipeline.dlq.errors import MissingTopic, NotConfirmed, NothingMatched, ReplayFailed
from pipeline.dlq.filters import Filter
from pipeline.dlq.records import DeadLetter
from pipeline.reliability.ratelimit import TokenBucket
from pipeline.topics import TopicCatalog

log = structlog.get_logger("pipeline.dlq")

BATCH = 100  # records per transaction (at most one second of --rate)

# Headers of the failure that a replayed event must not carry: the delivery code reads the attempt to
# decide between a retry tier and the DLQ, and the due time to hold it.
FAILURE_HEADERS = frozenset(
    {
        h.ATTEMPT,
        h.DUE_MS,
        h.FIRST_FAILED_AT,
        h.FAILED_AT,
        h.ERROR_REASON,
        h.ERROR_MESSAGE,
        h.ERROR_CLASS,
        h.ERROR_TRACEBACK,
        h.SINK,
        h.FAILED_TOPIC,
        h.FAILED_PARTITION,
        h.FAILED_OFFSET,
        h.REPLAY_COUNT,
        h.PRODUCER_PREFIX + h.REPLAY_COUNT,
    }
)


@dataclass(frozen=True)
class ReplayRequest:
    sink: str
    flt: Filter = field(default_factory=Filter)
    limit: int | None = None  # at most this many matching events
    to: access.Destination = "sink"
    rate: float | None = None  # events per second
    dry_run: bool = False


@dataclass
class ReplaySummary:
    dlq: str
    destination: str
    parked_topic: str | None
    cap: int
    matched: int = 0
    resent: int = 0
    parked: int = 0
    skipped: int = 0  # scanned, did not match, kept pending
    failed: int = 0
    planned: list[tuple[DeadLetter, str]] = field(default_factory=list)  # (event, "resend" | "park"), phase 1

    @property
    def would_park(self) -> int:
        return sum(1 for _, action in self.planned if action == "park")

    @property
    def parked_why(self) -> str:
        return f"replayed {self.cap} times already (DLQ_REPLAY_MAX={self.cap})"

    def as_dict(self) -> dict[str, object]:
        return {
            "dlq": self.dlq,
            "destination": self.destination,
            "parked_topic": self.parked_topic,
            "matched": self.matched,
            "resent": self.resent,
            "parked": self.parked,
            "parked_reason": self.parked_why if self.parked or self.would_park else None,
            "skipped": self.skipped,
            "failed": self.failed,
        }


def replay_headers(record: DeadLetter, ingest: bool) -> list[tuple[str, bytes | None]]:
    """The record's headers for its re-send: the failure's dropped (for the ingest DLQ every header of the
    pipeline's namespace, which the ingest agent adds afresh), the replay count raised."""
    kept = [(k, v) for k, v in record.headers if k not in FAILURE_HEADERS and not (ingest and h.is_reserved(k))]
    return [*kept, (h.REPLAY_COUNT, h.text(record.replay_count + 1))]


def parked_headers(record: DeadLetter, why: str) -> list[tuple[str, bytes | None]]:
    added = {h.PARKED_REASON: why, h.PARKED_AT: datetime.now(UTC).isoformat()}
    return [*((k, v) for k, v in record.headers if k not in added), *((k, h.text(v)) for k, v in added.items())]


async def replay(
    settings: Settings,
    catalog: TopicCatalog,
    request: ReplayRequest,
    *,
    confirm: Callable[[ReplaySummary], bool] | None = None,
    progress: Callable[[ReplaySummary], None] | None = None,
) -> ReplaySummary:
    """Plan (read-only), then unless `dry_run` ask `confirm` (None: no question) and replay.
    NothingMatched when no pending event matches; NotConfirmed when `confirm` says no; ReplayFailed
    (with the summary in `.summary`) when a transaction failed: what it held stays pending."""
    target = access.resolve(settings, catalog, request.sink)
    destination = target.destination(request.to)
    summary = ReplaySummary(target.dlq, destination, target.parked, settings.dlq_replay_max)
    stops = await _plan(settings, target, request, summary)
    if not summary.planned:
        raise NothingMatched(f"no pending event in {target.dlq} matches {request.flt.describe()}")
    if summary.would_park and target.parked is None:
        raise MissingTopic(
            f"{summary.would_park} events were {summary.parked_why} and must be parked, but topics.yaml declares "
            f"no parking topic for {target.name!r} (role sink_parked / ingest_parked)"
        )
    if request.dry_run:
        summary.matched = len(summary.planned)
        return summary
    if confirm is not None and not confirm(summary):
        raise NotConfirmed("replay not confirmed; nothing was changed")
    try:
        await _run(settings, catalog, target, request, summary, stops, progress)
    except _Stop:
        pass
    if summary.failed:
        raise ReplayFailed(f"{summary.failed} events could not be replayed; they stay pending (run again)", summary)
    return summary


async def _plan(
    settings: Settings, target: access.DlqTarget, request: ReplayRequest, summary: ReplaySummary
) -> dict[TopicPartition, int]:
    """Fills summary.planned; returns per partition the offset after the last matching event."""
    client = await access.start(access.consumer(settings.kafka, target.group, client="dlq-replay-plan"))
    stops: dict[TopicPartition, int] = {}
    try:
        needed = [target.dlq, summary.destination] + ([target.parked] if target.parked else [])
        await access.partitions(client, needed)
        async for record in access.scan(client, await access.spans(client, target.dlq, target.group)):
            if not request.flt.matches(record):
                continue
            action = "park" if record.replay_count >= summary.cap else "resend"
            summary.planned.append((record, action))
            stops[TopicPartition(record.topic, record.partition)] = record.offset + 1
            if request.limit is not None and len(summary.planned) >= request.limit:
                break
    finally:
        await client.stop()
    return stops


async def _run(
    settings: Settings,
    catalog: TopicCatalog,
    target: access.DlqTarget,
    request: ReplayRequest,
    summary: ReplaySummary,
    stops: dict[TopicPartition, int],
    progress: Callable[[ReplaySummary], None] | None,
) -> None:
    bucket = TokenBucket(request.rate) if request.rate else None
    batch_size = max(1, min(BATCH, int(request.rate))) if request.rate else BATCH
    ingest = target.name == access.INGEST
    # Starting the producer runs init_transactions: it aborts an open transaction of a killed run and
    # fences a replay of the same DLQ still running.
    producer = await access.start(access.producer(settings.kafka, catalog, transactional_id=target.group))
    try:
        client = await access.start(access.consumer(settings.kafka, target.group, client="dlq-replay"))
        try:
            ranges = [s for s in await access.spans(client, target.dlq, target.group) if s.tp in stops]
            ranges = [access.Span(s.tp, s.log_start, s.committed, min(s.end, stops[s.tp])) for s in ranges]
            batch: list[DeadLetter] = []
            async for record in access.scan(client, ranges):
                batch.append(record)
                if bucket is not None and request.flt.matches(record):
                    await bucket.acquire(1)
                if len(batch) >= batch_size:
                    await _commit(producer, target, request, summary, batch, ingest)
                    batch = []
                    if progress:
                        progress(summary)
            if batch:
                await _commit(producer, target, request, summary, batch, ingest)
            if progress:
                progress(summary)
        finally:
            await client.stop()
    finally:
        await producer.stop()


async def _commit(
    producer: AIOKafkaProducer,
    target: access.DlqTarget,
    request: ReplayRequest,
    summary: ReplaySummary,
    batch: list[DeadLetter],
    ingest: bool,
) -> None:
    """One transaction: the batch's re-sends, parkings and kept copies, and the offsets past it."""
    counts = {"resent": 0, "parked": 0, "skipped": 0}
    offsets: dict[TopicPartition, int] = {}
    try:
        await producer.begin_transaction()
        futures = []
        for record in batch:
            offsets[TopicPartition(record.topic, record.partition)] = record.offset + 1
            if not request.flt.matches(record):
                counts["skipped"] += 1
                futures.append(await access.send_copy(producer, record.topic, record, record.partition))
            elif record.replay_count >= summary.cap:
                assert target.parked is not None
                counts["parked"] += 1
                headers = parked_headers(record, summary.parked_why)
                futures.append(await producer.send(target.parked, key=record.key, value=record.value, headers=headers))
            else:
                counts["resent"] += 1
                headers = replay_headers(record, ingest)
                futures.append(
                    await producer.send(summary.destination, key=record.key, value=record.value, headers=headers)
                )
        await asyncio.gather(*futures)
        await producer.send_offsets_to_transaction(offsets, target.group)
        await producer.commit_transaction()
    except Exception as exc:  # the transaction's records and offsets are discarded: nothing of it happened
        summary.failed += len(batch) - counts["skipped"]
        log.error("replay transaction failed", dlq=target.dlq, error=f"{type(exc).__name__}: {exc}")
        try:
            await producer.abort_transaction()
        except Exception as abort_error:  # fenced or broken: the next run aborts it on start
            log.warning("replay abort failed", dlq=target.dlq, error=f"{type(abort_error).__name__}: {abort_error}")
        raise _Stop() from exc
    summary.resent += counts["resent"]
    summary.parked += counts["parked"]
    summary.skipped += counts["skipped"]
    summary.matched += counts["resent"] + counts["parked"]


class _Stop(Exception):
    """A transaction failed: the run stops (later batches would leave a gap before them)."""
