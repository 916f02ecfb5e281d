"""What each DLQ holds: pending events (not yet handled by a replay), oldest and newest, by reason, class
and origin topic."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pipeline import headers as h
from pipeline.config import Settings
from pipeline.dlq import access
from pipeline.dlq.timeparse import from_ms
from pipeline.topics import TopicCatalog

UNKNOWN = "-"


@dataclass
class DlqStats:
    name: str
    topic: str
    pending: int = 0  # from the replay group's offset to the end
    replayed: int = 0  # still in the topic, below the replay group's offset
    oldest_ms: int | None = None
    newest_ms: int | None = None
    by_reason: Counter[str] = field(default_factory=Counter)
    by_class: Counter[str] = field(default_factory=Counter)
    by_origin: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sink": self.name,
            "topic": self.topic,
            "pending": self.pending,
            "replayed": self.replayed,
            "oldest": from_ms(self.oldest_ms) if self.oldest_ms is not None else None,
            "newest": from_ms(self.newest_ms) if self.newest_ms is not None else None,
            "by_reason": dict(self.by_reason.most_common()),
            "by_class": dict(self.by_class.most_common()),
            "by_origin": dict(self.by_origin.most_common()),
        }


async def one_dlq_stats(settings: Settings, target: access.DlqTarget) -> DlqStats:
    stats = DlqStats(target.name, target.dlq)
    client = await access.start(access.consumer(settings.kafka, target.group, client="dlq-stats"))
    try:
        ranges = await access.spans(client, target.dlq, target.group)
        stats.replayed = sum(s.replayed for s in ranges)
        async for record in access.scan(client, ranges):
            stats.pending += 1
            ts = record.timestamp_ms
            stats.oldest_ms = ts if stats.oldest_ms is None else min(stats.oldest_ms, ts)
            stats.newest_ms = ts if stats.newest_ms is None else max(stats.newest_ms, ts)
            stats.by_reason[record.header(h.ERROR_REASON) or UNKNOWN] += 1
            stats.by_class[record.header(h.ERROR_CLASS) or UNKNOWN] += 1
            stats.by_origin[record.header(h.ORIGIN_TOPIC) or record.header(h.FAILED_TOPIC) or UNKNOWN] += 1
    finally:
        await client.stop()
    return stats


async def dlq_stats(settings: Settings, catalog: TopicCatalog) -> list[DlqStats]:
    """Every DLQ: the ingest DLQ first, then each enabled sink's."""
    return [await one_dlq_stats(settings, target) for target in access.all_targets(settings, catalog)]
