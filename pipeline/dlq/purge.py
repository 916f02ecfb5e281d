"""Delete dead letters. Kafka deletes only a prefix of a partition (DeleteRecords before an offset), never
single records: `before` removes every record older than the first one at or after that time (found with
offsets-for-times), `--all` everything up to the end."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from pipeline.config import Settings
from pipeline.dlq import access
from pipeline.dlq.timeparse import to_ms
from pipeline.topics import TopicCatalog


@dataclass(frozen=True)
class Removed:
    tp: TopicPartition
    first: int  # the log start before
    before: int  # the log start after; records [first, before) were removed

    @property
    def count(self) -> int:
        return max(0, self.before - self.first)


@dataclass(frozen=True)
class PurgePlan:
    topic: str
    parts: tuple[Removed, ...]

    @property
    def count(self) -> int:
        return sum(p.count for p in self.parts)


async def plan_purge(settings: Settings, catalog: TopicCatalog, sink: str, before: datetime | None) -> PurgePlan:
    """What a purge would remove: before `before`, or everything (None). Changes nothing."""
    target = access.resolve(settings, catalog, sink)
    client = await access.start(access.consumer(settings.kafka, committed_only=False, client="dlq-purge"))
    try:
        tps = (await access.partitions(client, [target.dlq]))[target.dlq]
        starts = await client.beginning_offsets(tps)
        ends = await client.end_offsets(tps)
        cut = dict(ends)
        if before is not None:
            found = await client.offsets_for_times({tp: to_ms(before) for tp in tps})
            cut = {tp: found[tp].offset if found[tp] is not None else ends[tp] for tp in tps}
    finally:
        await client.stop()
    return PurgePlan(target.dlq, tuple(Removed(tp, starts[tp], max(starts[tp], cut[tp])) for tp in tps))


async def purge(settings: Settings, plan: PurgePlan) -> PurgePlan:
    """Deletes what `plan` names; returns what was removed (per partition, from the broker's new log start)."""
    todo = {p.tp: RecordsToDelete(before_offset=p.before) for p in plan.parts if p.count}
    if not todo:
        return plan
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.servers, **settings.kafka.admin_kwargs())
    await admin.start()
    try:
        low = await admin.delete_records(todo)
    finally:
        await admin.close()
    return PurgePlan(plan.topic, tuple(Removed(p.tp, p.first, low.get(p.tp, p.before)) for p in plan.parts))
