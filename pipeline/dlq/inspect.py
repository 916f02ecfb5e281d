"""The pending events of one DLQ that match a filter, and how to show one to a person."""

from __future__ import annotations

from pipeline.config import Settings
from pipeline.dlq import access
from pipeline.dlq.errors import NothingMatched
from pipeline.dlq.filters import Filter
from pipeline.dlq.records import DeadLetter
from pipeline.dlq.timeparse import from_ms
from pipeline.topics import TopicCatalog


async def matching(settings: Settings, target: access.DlqTarget, flt: Filter, limit: int | None) -> list[DeadLetter]:
    found: list[DeadLetter] = []
    client = await access.start(access.consumer(settings.kafka, target.group, client="dlq-inspect"))
    try:
        async for record in access.scan(client, await access.spans(client, target.dlq, target.group)):
            if flt.matches(record):
                found.append(record)
                if limit is not None and len(found) >= limit:
                    break
    finally:
        await client.stop()
    return found


async def inspect(
    settings: Settings, catalog: TopicCatalog, sink: str, flt: Filter, limit: int | None = None
) -> list[DeadLetter]:
    """NothingMatched when no pending event matches."""
    target = access.resolve(settings, catalog, sink)
    found = await matching(settings, target, flt, limit)
    if not found:
        raise NothingMatched(f"no pending event in {target.dlq} matches {flt.describe()}")
    return found


SHOWN_CHARS = 4096  # of a value or header in the text view; --json gives every byte


def _shown(text: str, size: int) -> str:
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS]}... ({size:,} bytes in all; --json shows every byte)"


def pretty(record: DeadLetter) -> str:
    """A multi-line view for a terminal: coordinates, headers, payload (each cut at SHOWN_CHARS)."""
    lines = [f"{record.topic}[{record.partition}]@{record.offset}  {from_ms(record.timestamp_ms)}"]
    lines.append(f"  key: {record.key_text if record.key_text is not None else record.key!r}")
    for name, value in record.headers:
        text = _shown(value.decode("utf-8", "replace"), len(value)) if value is not None else "null"
        if "\n" in text:
            text = text.replace("\n", "\n      ")
        lines.append(f"  {name}: {text}")
    body = _shown(record.value.decode("utf-8", "replace"), len(record.value)) if record.value is not None else "null"
    lines.append(f"  value: {body}")
    return "\n".join(lines)
