"""Which dead letters an operation selects. Times compare with the record's timestamp (when it was
dead-lettered; export/import keep it): since inclusive, until exclusive."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pipeline import headers as h
from pipeline.dlq.records import DeadLetter
from pipeline.dlq.timeparse import to_ms


@dataclass(frozen=True)
class Filter:
    error_class: str | None = None  # pipeline.error.class, exact
    reason: str | None = None  # pipeline.error.reason, exact
    since: datetime | None = None
    until: datetime | None = None
    key: str | None = None  # the record key as text, exact
    partition: int | None = None  # coordinates of one record (the admin API's retry of one event)
    offset: int | None = None

    def matches(self, record: DeadLetter) -> bool:
        if self.partition is not None and record.partition != self.partition:
            return False
        if self.offset is not None and record.offset != self.offset:
            return False
        if self.error_class is not None and record.header(h.ERROR_CLASS) != self.error_class:
            return False
        if self.reason is not None and record.header(h.ERROR_REASON) != self.reason:
            return False
        if self.since is not None and record.timestamp_ms < to_ms(self.since):
            return False
        if self.until is not None and record.timestamp_ms >= to_ms(self.until):
            return False
        return self.key is None or record.key_text == self.key

    @property
    def empty(self) -> bool:
        return self == Filter()

    def describe(self) -> str:
        parts = [f"{name}={value}" for name, value in vars(self).items() if value is not None]
        return ", ".join(parts) or "all events"
