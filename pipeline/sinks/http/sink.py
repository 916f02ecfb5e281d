"""Generic HTTP webhook sink: POSTs a batch as a JSON array of events (their canonical bodies plus the
event hash). Status codes are classified by the sink's retry policy (`retryable_status`), and a
`Retry-After` header (seconds or HTTP date) rides along on the error for the breaker to honour."""

from __future__ import annotations

from typing import Any

import httpx
import structlog

from pipeline.reliability.retry_after import parse_retry_after
from pipeline.sinks.base import FatalSinkError, RetryableSinkError, Sink, SinkRecord, SinkTimeout, SinkUnavailable
from pipeline.sinks.http.config import HttpSinkSettings

log = structlog.get_logger(__name__)


class HttpSink(Sink):
    def __init__(self, settings: HttpSinkSettings) -> None:
        self.name = settings.name
        self.settings = settings
        self._client: httpx.AsyncClient | None = None

    async def open(self) -> None:
        timeout = self.settings.retry.timeout_ms / 1000
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout), follow_redirects=False)
        log.info("sink opened", sink=self.name, kind="http")

    async def write(self, batch: list[SinkRecord]) -> int:
        if not batch:
            return 0
        if self._client is None or not self.settings.url:
            raise SinkUnavailable(f"sink {self.name} is not open")
        body = b"[" + b",".join(_entry(r) for r in batch) + b"]"
        try:
            response = await self._client.post(
                self.settings.url, content=body, headers={"content-type": "application/json"}
            )
        except httpx.TimeoutException as exc:
            raise SinkTimeout(f"http timeout: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            raise SinkUnavailable(f"http request failed: {type(exc).__name__}: {exc}") from exc
        if 200 <= response.status_code < 300:
            return len(batch)
        message = f"http {response.status_code}: {response.text[:300]}"
        if self.settings.retry.is_retryable_status(response.status_code):
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            raise RetryableSinkError(message, retry_after=retry_after)
        raise FatalSinkError(message)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def health(self) -> dict[str, Any]:
        return {"sink": self.name, "ok": self._client is not None}


def _entry(record: SinkRecord) -> bytes:
    # {"event_hash": "...", "event": <canonical body>} without re-encoding the body.
    return b'{"event_hash":"' + record.event_hash.encode() + b'","event":' + record.body + b"}"
