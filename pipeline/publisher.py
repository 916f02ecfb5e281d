"""Publish events to the ingest topic: a small API for applications, used by `pipeline publish`.

Every send waits for acks=all with an idempotent producer, so a retried send is not written twice
by Kafka itself. Events are validated before sending unless `validate=False` (the ingest agent
validates again and dead-letters what fails, so an unvalidated publish loses nothing either).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline import headers as h
from pipeline.config import Settings
from pipeline.events import Rejection, parse_event
from pipeline.limits import ingest_message_bytes
from pipeline.produce import acked_producer


@dataclass
class PublishResult:
    sent: int = 0
    rejected: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)


class Publisher:
    def __init__(
        self,
        settings: Settings,
        *,
        topic: str | None = None,
        key_field: str | None = "source",
        validate: bool = True,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.topic = topic or settings.ingest_topic
        self.key_field = key_field
        self.validate = validate
        self.headers = [(k, v.encode()) for k, v in (headers or {}).items()]
        kafka = settings.kafka
        self._producer = acked_producer(
            kafka,
            client_id=f"{kafka.client_id}-publisher",
            max_request_size=ingest_message_bytes(settings.max_event_bytes),
        )

    async def __aenter__(self) -> Publisher:
        try:
            await self._producer.start()
        except BaseException:
            await self._producer.stop()  # else aiokafka warns "Unclosed AIOKafkaProducer" at exit
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    def _check(self, raw: bytes) -> bytes | None:
        """The Kafka key for a valid event; raises Rejection for an invalid one."""
        if self.validate:
            parse_event(raw, self.settings.max_event_bytes)
        if not self.key_field:
            return None
        try:
            value = orjson.loads(raw).get(self.key_field)
        except (orjson.JSONDecodeError, AttributeError):
            return None
        return str(value).encode() if value is not None else None

    async def send_raw(
        self, raw: bytes, *, key: bytes | None = None, headers: Iterable[tuple[str, bytes]] = ()
    ) -> asyncio.Future[Any]:
        """Queue one message; the returned future resolves when the broker acknowledged it."""
        future: asyncio.Future[Any] = await self._producer.send(
            self.topic, value=raw, key=key, headers=[*self.headers, *headers]
        )
        return future

    async def send(self, event: Mapping[str, Any], *, idempotency_key: str | None = None) -> None:
        raw = orjson.dumps(event)
        key = self._check(raw)
        extra = [(h.IDEMPOTENCY_KEY, idempotency_key.encode())] if idempotency_key else []
        await (await self.send_raw(raw, key=key, headers=extra))

    async def send_lines(self, lines: Iterable[bytes], on_line: Any = None) -> PublishResult:
        """Send JSON lines (blank lines are skipped); invalid ones are counted and not sent."""
        result = PublishResult()
        pending: list[asyncio.Future[Any]] = []
        for number, line in enumerate(lines, start=1):
            raw = line.strip()
            if on_line is not None:
                on_line(len(line))
            if not raw:
                continue
            try:
                key = self._check(raw)
            except Rejection as rejection:
                result.rejected += 1
                result.problems.append((number, f"{rejection.reason}: {rejection.message}"))
                continue
            pending.append(await self.send_raw(raw, key=key))
            if len(pending) >= 1000:
                await asyncio.gather(*pending)
                result.sent += len(pending)
                pending.clear()
        await asyncio.gather(*pending)
        result.sent += len(pending)
        return result
