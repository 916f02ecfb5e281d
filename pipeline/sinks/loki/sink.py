"""Grafana Loki sink: pushes each event as one log line to POST {url}/loki/api/v1/push.

Labels, entries, the bound on streams, splitting and the two encodings are in pipeline.sinks.loki.push.

Idempotence: an event always becomes the same entry (same stream, timestamp and line) on every worker,
after every restart and from every retry tier: its stream is a function of the event and the settings alone
(pipeline.sinks.loki.push, step 4). Loki drops an entry only when the same stream already holds the same
timestamp and the same line, so writing a batch again (a retry, a redelivery after a crash, the halves of a
bisected batch) stores every event once, as long as Loki accepts the entry again: with unordered writes
(Loki >= 2.4, the default) an entry older than its stream's newest minus max_chunk_age/2 is rejected as
"too far behind", duplicate or not (only the stream's very last entry is recognised before that check);
with unordered_writes=false any entry older than the stream's newest is "out of order"; and an entry older
than reject_old_samples_max_age (7 days) is "too old". Such a re-sent entry goes to the DLQ although Loki
holds it: stored once, never twice.

Classification of a push's response (the sink never retries by itself):
  2xx                                     ok
  retryable per retry.retryable_status    RetryableSinkError with Retry-After (default 408, 425, 429, 5xx)
  (429, 5xx, ...)
  400 (too old, out of order, bad labels) FatalSinkError with Loki's message. Loki keeps the valid entries
                                          of that push, so the runner's bisection resends them, Loki drops
                                          them as exact duplicates, and only the rejected event ends in the
                                          DLQ (see Idempotence for the limits of "drops").
  other 4xx (401, 403, 413, ...)          FatalSinkError
  httpx timeout                           SinkTimeout
  connection error                        SinkUnavailable
Every message passes the redactor (pipeline.redact) first: a gateway that echoes the request's
Authorization header in its 401 body leaves no token or password in the error, the logs or the DLQ.
A record that can never be an entry (line longer than max_line_bytes, unreadable body) fails the whole
write with FatalSinkError before anything is sent; bisection isolates it.
"""

from __future__ import annotations

import ssl
import time
from typing import Any

import httpx
import structlog

from pipeline.redact import Redactor, current
from pipeline.sinks.base import FatalSinkError, Sink, SinkError, SinkRecord, SinkUnavailable
from pipeline.sinks.httpx_errors import close_quietly, excerpt, raise_for_status, retry_after, transport_errors
from pipeline.sinks.loki.config import LokiSinkSettings
from pipeline.sinks.loki.push import (
    Entry,
    InvalidEntry,
    StreamLabeler,
    build_pushes,
    encode_push,
    group_streams,
    parse_record,
)

log = structlog.get_logger(__name__)

MESSAGE_LIMIT = 2000  # characters of Loki's response kept in the error (and so in the DLQ header)


class LokiSink(Sink):
    health_probes_sink = True  # health() asks Loki's GET /ready

    def __init__(self, settings: LokiSinkSettings) -> None:
        self.name = settings.name
        self.settings = settings
        self.labeler = StreamLabeler(
            label_keys=tuple(settings.label_keys),
            event_label_allowlist=tuple(settings.event_label_allowlist),
            max_streams=settings.max_streams,
        )
        self._client: httpx.AsyncClient | None = None
        self._redact: Redactor = Redactor.from_models(settings)
        self._push_url = settings.push_url() if settings.url else ""
        self.pushes = 0
        self.last_push_at: float | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> None:
        if not self.settings.url:
            raise FatalSinkError(f"sink {self.name}: url is not set")
        self._redact = current().union(Redactor.from_models(self.settings))
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.settings.retry.timeout_ms / 1000),
            http2=True,
            verify=self._verify(),
            headers=self._headers(),
            auth=self._auth(),
            follow_redirects=False,
        )
        try:
            await self._check_ready(client)
        except BaseException:
            await client.aclose()
            raise
        old, self._client = self._client, client
        if old is not None:
            await old.aclose()
        log.info(
            "sink opened",
            sink=self.name,
            kind="loki",
            url=self.settings.base_url(),
            encoding=self.settings.encoding,
            tenant=self.settings.tenant_id,
        )

    def _verify(self) -> ssl.SSLContext | bool:
        if not self.settings.tls_verify:
            return False
        if self.settings.ca_file is not None:
            return ssl.create_default_context(cafile=str(self.settings.ca_file))
        return True

    def _headers(self) -> dict[str, str]:
        headers = {"user-agent": "pipeline-loki-sink"}
        if self.settings.tenant_id:
            headers["x-scope-orgid"] = self.settings.tenant_id
        if self.settings.bearer_token is not None:
            headers["authorization"] = f"Bearer {self.settings.bearer_token.get_secret_value()}"
        return headers

    def _auth(self) -> httpx.BasicAuth | None:
        if self.settings.bearer_token is not None:
            return None
        if self.settings.username:
            password = self.settings.password.get_secret_value() if self.settings.password else ""
            return httpx.BasicAuth(self.settings.username, password)
        credentials = self.settings.url_credentials()
        return httpx.BasicAuth(*credentials) if credentials else None

    async def _check_ready(self, client: httpx.AsyncClient) -> None:
        """GET /ready: unreachable or 503 (Loki starting) fails the open (the runner retries it); any
        other answer, 404 from a gateway included, lets the writes decide."""
        url = self.settings.base_url() + "/ready"
        with transport_errors("loki /ready", self._redact):
            response = await client.get(url)
        if response.status_code == 503:
            raise SinkUnavailable(
                self._redact(
                    f"loki not ready: {(excerpt(response, MESSAGE_LIMIT, self._redact) or response.reason_phrase)}"
                ),
                retry_after=retry_after(response),
            )
        if response.status_code != 200:
            log.info("loki /ready check inconclusive", sink=self.name, status=response.status_code)

    async def close(self) -> None:
        client, self._client = self._client, None
        await close_quietly(client, self.name)

    async def health(self) -> dict[str, Any]:
        """Loki's own GET /ready, as at open: unreachable or 503 is not ok."""
        client = self._client
        error: str | None = None if client is not None else "not open"
        if client is not None:
            try:
                await self._check_ready(client)
            except SinkError as exc:
                error = str(exc)
        return {
            "sink": self.name,
            "ok": error is None,
            **({"error": error} if error is not None else {}),
            "max_streams": self.settings.max_streams,
            "bucketed_events": self.labeler.bucketed_events,
            "pushes": self.pushes,
            "last_push_at": self.last_push_at,
        }

    # -- writing -----------------------------------------------------------------------------------

    async def write(self, batch: list[SinkRecord]) -> int:
        if not batch:
            return 0
        client = self._client
        if client is None:
            raise SinkUnavailable(f"sink {self.name} is not open")
        items: list[tuple[str, dict[str, str], Entry]] = []
        invalid: list[str] = []
        for record in batch:
            try:
                entry, event = parse_record(record.body, record.event_hash, self.settings.max_line_bytes)
            except InvalidEntry as exc:
                invalid.append(str(exc))
                continue
            labels, pairs = self.labeler.labels_for(event)
            items.append((labels, pairs, entry))
        if invalid:
            more = f" (+{len(invalid) - 1} more)" if len(invalid) > 1 else ""
            raise FatalSinkError(invalid[0] + more)
        streams = group_streams(items)
        for push in build_pushes(streams, self.settings.encoding, self.settings.max_push_bytes):
            body = encode_push(push, self.settings.encoding)
            await self._send(client, body.content, body.headers)
        return len(batch)

    async def _send(self, client: httpx.AsyncClient, content: bytes, headers: dict[str, str]) -> None:
        with transport_errors("loki push", self._redact):
            response = await client.post(self._push_url, content=content, headers=headers)
        self.pushes += 1
        self.last_push_at = time.time()
        status = response.status_code
        if 200 <= status < 300:
            return
        raise_for_status(
            response,
            self._redact(
                f"loki {status}: {(excerpt(response, MESSAGE_LIMIT, self._redact) or response.reason_phrase)}"
            ),
            self.settings.retry.is_retryable_status,
        )
