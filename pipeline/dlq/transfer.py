"""Export a DLQ to JSON lines and import them (pipeline.dlq.codec): for another cluster, or to keep events
past retention. Import keeps key, value, headers (order, repeats, bytes) and the record timestamp; it writes
to the record's partition when the DLQ has it, else lets the key choose."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TextIO

from pipeline.config import Settings
from pipeline.dlq import access, codec
from pipeline.dlq.filters import Filter
from pipeline.dlq.inspect import inspect
from pipeline.topics import TopicCatalog


async def export_dlq(settings: Settings, catalog: TopicCatalog, sink: str, flt: Filter, out: TextIO) -> int:
    """Writes the matching pending events, one line each; returns how many (NothingMatched when none)."""
    records = await inspect(settings, catalog, sink, flt)
    for record in records:
        out.write(codec.encode(record) + "\n")
    return len(records)


async def import_dlq(settings: Settings, catalog: TopicCatalog, sink: str, lines: Iterable[str]) -> int:
    """Produces every line's record into the DLQ (acks=all, idempotent); returns how many.
    A malformed line stops the import before anything is sent (CodecError naming the line)."""
    target = access.resolve(settings, catalog, sink)
    records = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                records.append(codec.decode(line))
            except codec.CodecError as exc:
                raise codec.CodecError(f"line {number}: {exc}") from None
    client = await access.start(access.consumer(settings.kafka, client="dlq-import"))
    try:
        count = len((await access.partitions(client, [target.dlq]))[target.dlq])
    finally:
        await client.stop()
    producer = await access.start(access.producer(settings.kafka, catalog))
    try:
        futures = [
            await access.send_copy(producer, target.dlq, r, r.partition if 0 <= r.partition < count else None)
            for r in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(records)
