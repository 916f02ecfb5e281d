"""POST /ingest, the seeds' ingestion endpoint: one JSON event, a JSON array of events, or NDJSON.

Every event is validated by the ingest stage's own code (pipeline.ingest.route) before anything is
produced: one invalid event refuses the whole request (400, with the index and reason of each invalid
one), one over INGEST_MAX_EVENT_BYTES gives 413. Valid requests are produced to the ingest topic with
acks=all and answered 202 with the count only once the broker acknowledged every event; while the
broker does not answer, 503 with Retry-After (nothing is half-accepted: a client retries the request;
events produced before the failure are recognised as duplicates downstream). The ingest agent then
treats them like any event on the topic. Each event keeps its exact bytes (numbers are not re-spelt).

Optional bearer token (INGEST_TOKEN); a token bucket per client address (INGEST_RATE_LIMIT_PER_SEC
requests per second, INGEST_RATE_LIMIT_BURST) answers 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass

import structlog
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from pipeline import headers as h
from pipeline.config import Settings
from pipeline.ingest import Origin, route
from pipeline.limits import ingest_message_bytes
from pipeline.observability import metrics
from pipeline.produce import acked_producer
from pipeline.reliability.ratelimit import ClientBuckets
from pipeline.web.auth import authorized, refuse

log = structlog.get_logger("pipeline.web.ingest")

RETRY_AFTER_UNAVAILABLE_SEC = 5
_DECODER = json.JSONDecoder()
_WHITESPACE = " \t\r\n"


class BodyError(ValueError):
    pass


def split_events(body: bytes, content_type: str = "") -> list[bytes]:
    """The events of a request body, each its exact bytes: NDJSON (content type application/x-ndjson
    or several lines that each hold a JSON value), a JSON array, or one JSON value."""
    if not body.strip():
        raise BodyError("the body is empty")
    if "ndjson" in content_type or "jsonlines" in content_type:
        return [line for line in body.split(b"\n") if line.strip()]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError("the body is not UTF-8") from None
    start = len(text) - len(text.lstrip(_WHITESPACE))
    if text[start] == "[":
        return _array_elements(text, start)
    lines = [line for line in body.split(b"\n") if line.strip()]
    if len(lines) > 1 and all(_one_value(line) for line in lines):
        return lines
    return [body]


def _one_value(line: bytes) -> bool:
    try:
        text = line.decode("utf-8").strip()
        _, end = _DECODER.raw_decode(text)
    except (ValueError, RecursionError):
        return False
    return end == len(text)


def _array_elements(text: str, start: int) -> list[bytes]:
    """The exact text of each element of the JSON array at `start` (the events validate them)."""
    elements: list[bytes] = []
    i = _skip(text, start + 1)
    if i < len(text) and text[i] == "]":
        return elements
    while True:
        try:
            _, end = _DECODER.raw_decode(text, i)
        except (ValueError, RecursionError) as exc:
            raise BodyError(f"the JSON array is malformed at character {i}: {exc}"[:300]) from None
        elements.append(text[i:end].encode("utf-8"))
        i = _skip(text, end)
        if i < len(text) and text[i] == ",":
            i = _skip(text, i + 1)
            continue
        if i < len(text) and text[i] == "]" and not text[i + 1 :].strip(_WHITESPACE):
            return elements
        raise BodyError(f"the JSON array is malformed at character {i}")


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WHITESPACE:
        i += 1
    return i


@dataclass(frozen=True)
class Valid:
    key: bytes
    value: bytes  # the event as the client sent it
    headers: list[tuple[str, bytes]]


class IngestEndpoint:
    """The handler of POST /ingest with its producer (started on first use, again after a failure)."""

    def __init__(self, settings: Settings, topic: str, max_record_bytes: int) -> None:
        self.settings = settings
        self.topic = topic
        self.max_record_bytes = max_record_bytes
        self.token = settings.ingest_token
        self.buckets = (
            ClientBuckets(
                settings.ingest_rate_limit_per_sec,
                capacity=settings.ingest_rate_limit_burst,
            )
            if settings.ingest_rate_limit_per_sec > 0
            else None
        )
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._stopping: set[asyncio.Task[None]] = set()

    async def producer(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                kafka = self.settings.kafka
                producer = acked_producer(
                    kafka,
                    client_id=f"{kafka.client_id}-http-ingest",
                    max_request_size=ingest_message_bytes(self.settings.max_event_bytes),
                    request_timeout_ms=int(self.settings.ingest_http_timeout_sec * 1000),
                )
                try:
                    async with asyncio.timeout(self.settings.ingest_http_timeout_sec):
                        await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    def validate(self, raw: list[bytes], idempotency_key: str | None) -> tuple[list[Valid], list[dict[str, object]]]:
        """The events as the ingest agent will judge them (pipeline.ingest.route), nothing produced yet."""
        valid: list[Valid] = []
        errors: list[dict[str, object]] = []
        headers = [(h.IDEMPOTENCY_KEY, idempotency_key.encode())] if idempotency_key and len(raw) == 1 else []
        origin = Origin(self.topic, -1, -1)
        for index, body in enumerate(raw):
            routed = route(
                None,
                body,
                headers,
                origin,
                max_event_bytes=self.settings.max_event_bytes,
                max_record_bytes=self.max_record_bytes,
            )
            if routed.rejection is not None:
                errors.append({"index": index, "reason": routed.rejection.reason, "message": routed.rejection.message})
            elif routed.accepted is not None:
                valid.append(Valid(routed.accepted.event_hash.encode(), body, headers))
        return valid, errors

    async def handle(self, request: web.Request) -> web.Response:
        response = await self._handle(request)
        metrics.HTTP_INGEST_REQUESTS.labels(str(response.status)).inc()
        return response

    async def _handle(self, request: web.Request) -> web.Response:
        if not authorized(request.headers.get("Authorization"), self.token):
            return refuse(request, "ingest")
        if self.buckets is not None:
            wait = self.buckets.try_take(request.remote or "-")
            if wait > 0:
                retry_after = str(max(1, math.ceil(wait))) if math.isfinite(wait) else "60"
                return web.json_response(
                    {"error": "rate limited", "retry_after_sec": wait}, status=429, headers={"Retry-After": retry_after}
                )
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _too_large(f"the request is over {self.settings.ingest_http_max_request_bytes} bytes")
        try:
            raw = split_events(body, request.content_type)
        except BodyError as exc:
            return web.json_response(
                {"error": "invalid request", "errors": [{"reason": "invalid_json", "message": str(exc)}]}, status=400
            )
        valid, errors = self.validate(raw, request.headers.get(h.IDEMPOTENCY_KEY))
        if errors:
            too_large = [e for e in errors if e["reason"] == "too_large"]
            log.info(
                "ingest request refused",
                events=len(raw),
                invalid=len(errors),
                client=request.remote,
                reasons=sorted({str(e["reason"]) for e in errors}),
            )
            if too_large:
                return _too_large(f"events over INGEST_MAX_EVENT_BYTES ({self.settings.max_event_bytes})", too_large)
            return web.json_response({"error": "invalid events", "accepted": 0, "errors": errors}, status=400)
        try:
            async with asyncio.timeout(self.settings.ingest_http_timeout_sec):
                producer = await self.producer()
                futures = [await producer.send(self.topic, value=v.value, key=v.key, headers=v.headers) for v in valid]
                await asyncio.gather(*futures)
        except (TimeoutError, KafkaError, OSError) as exc:
            log.warning("ingest request failed: broker unavailable", events=len(valid), error=str(exc)[:300])
            await self._discard_producer()
            return web.json_response(
                {"error": "broker unavailable", "accepted": 0},
                status=503,
                headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE_SEC)},
            )
        log.debug("ingest request accepted", events=len(valid), client=request.remote)
        return web.json_response({"accepted": len(valid)}, status=202)

    async def _discard_producer(self) -> None:
        """A producer that timed out may hold a dead connection; the next request makes a new one."""
        async with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:  # stopped in the background: stop() waits for the dead broker
            task = asyncio.get_running_loop().create_task(producer.stop())
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)


def _too_large(message: str, errors: list[dict[str, object]] | None = None) -> web.Response:
    return web.json_response({"error": "too large", "message": message, "errors": errors or []}, status=413)
