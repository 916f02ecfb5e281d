"""One dead-lettered record as the DLQ tools see it."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka.structs import ConsumerRecord

from pipeline import headers as h

HeaderList = tuple[tuple[str, bytes | None], ...]


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: HeaderList = ()

    @classmethod
    def from_record(cls, record: ConsumerRecord[bytes, bytes]) -> DeadLetter:
        return cls(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp,
            key=record.key,
            value=record.value,
            headers=tuple((k, None if v is None else bytes(v)) for k, v in (record.headers or ())),
        )

    def header(self, name: str) -> str | None:
        return h.header_value(self.headers, name)

    @property
    def key_text(self) -> str | None:
        try:
            return self.key.decode("utf-8") if self.key is not None else None
        except UnicodeDecodeError:
            return None

    @property
    def replay_count(self) -> int:
        """Times this event was replayed. The ingest agent renames the header (the pipeline's namespace is
        not a producer's), so an ingest-DLQ event carries it as producer.pipeline.replay.count."""
        for name in (h.REPLAY_COUNT, h.PRODUCER_PREFIX + h.REPLAY_COUNT):
            raw = self.header(name)
            if raw is not None:
                try:
                    return max(0, int(raw))
                except ValueError:
                    return 0
        return 0
