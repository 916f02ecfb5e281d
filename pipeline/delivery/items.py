"""One fetched record as delivery handles it, and a failed write of one."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import TopicPartition

from pipeline import headers as h
from pipeline.delivery.consumer import Record
from pipeline.delivery.routing import Attempts
from pipeline.sinks.base import FatalSinkError, SinkError


class UndecodableRecord(FatalSinkError):
    """A record on a sink topic delivery cannot even read (a key that is not UTF-8, no event hash, no
    value): it goes straight to the DLQ with reason `undecodable` instead of blocking its partition."""


@dataclass
class Item:
    record: Record
    tp: TopicPartition
    attempts: Attempts
    event_hash: str
    undecodable: UndecodableRecord | None = None

    @property
    def offset(self) -> int:
        offset: int = self.record.offset
        return offset

    @classmethod
    def of(cls, tp: TopicPartition, record: Record) -> Item:
        """Never raises: what cannot be read is kept as `undecodable`."""
        headers = list(record.headers or ())
        attempts = Attempts.from_headers(headers)
        problem: str | None = None
        event_hash = ""
        if record.key:
            try:
                event_hash = record.key.decode("utf-8")
            except UnicodeDecodeError:
                problem = "the record key (the event hash) is not UTF-8"
        else:
            event_hash = h.header_value(headers, h.EVENT_HASH) or ""
            if not event_hash:
                problem = f"the record has neither a key nor a {h.EVENT_HASH} header"
        if problem is None and record.value is None:
            problem = "the record has no value"
        if problem is None:
            return cls(record, tp, attempts, event_hash)
        error = UndecodableRecord(f"undecodable record at {tp.topic}[{tp.partition}]@{record.offset}: {problem}")
        return cls(record, tp, attempts, event_hash, error)


@dataclass
class Failure:
    item: Item
    error: SinkError
