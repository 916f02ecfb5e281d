"""Generic HTTP webhook sink: POSTs a batch as a JSON array `[{"event_hash": ..., "event": <canonical body>}, ...]`.

Every request carries:
  Content-Type: application/json
  Idempotency-Key: <hex sha256 of the request's event hashes, in body order, joined by "\\n">
      Names exactly this request body: the same body sent again (the same events in the same order)
      carries the same key, and a key never comes with other events or another order, as receivers that
      follow the Idempotency-Key draft (a reused key with another payload is refused, 422) require. The pipeline
      does not promise to send a failed request again as it was: a retryable failure moves its events
      to retry tiers, which regroup them; a fatal one is bisected; a redelivery after a crash is
      grouped anew. Each of those requests has its own key. So the key lets a receiver recognise a
      repeated request, never a repeated event: dedupe by the `event_hash` of each entry, which is the
      same for an event in every request, retry and redelivery.
  X-Pipeline-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes sent>   (when a secret is set)
      With gzip on, the signature is over the gzip-compressed bytes (what is on the wire): verify it before
      decompressing. The gzip stream is deterministic (mtime 0), so a retried batch has the same signature.
  Content-Encoding: gzip                       (when gzip is on)
  Authorization: Bearer <token>                (when bearer_token is set)
  plus the static `headers` of the settings.

Responses: a status in `success_codes` (default 2xx) means delivered; a status the retry policy lists as
retryable (`retryable_status`, default 408/425/429/5xx) raises RetryableSinkError with the `Retry-After`
(seconds or HTTP date) for the breaker; any other status (other 4xx, 3xx, a 2xx not in success_codes)
raises FatalSinkError, which makes the runner bisect the batch down to the poison events for the DLQ.
Timeouts raise SinkTimeout, connection failures SinkUnavailable. Error messages carry the status and the
start of the response body through the redactor (pipeline.redact): never the URL's password, the HMAC key,
the token, a header value (of any length) or an Authorization value a receiver echoes back.
The sink never retries by itself.

HTTP/2 (`http2`, default on) is offered through ALPN on https:// and used when the server picks it;
plain http:// stays HTTP/1.1.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import ssl
from typing import Any

import httpx
import structlog

from pipeline.redact import Redactor, current, remember
from pipeline.sinks.base import FatalSinkError, Sink, SinkRecord, SinkUnavailable
from pipeline.sinks.http.config import HttpSinkSettings
from pipeline.sinks.httpx_errors import close_quietly, excerpt, raise_for_status, transport_errors

log = structlog.get_logger(__name__)

BODY_IN_ERROR = 300  # characters of the response body kept in an error message
USER_AGENT = "pipeline-http-sink"


class HttpSink(Sink):
    def __init__(self, settings: HttpSinkSettings) -> None:
        super().__init__(settings)
        self.settings = settings
        self._client: httpx.AsyncClient | None = None
        self._key: bytes | None = None
        self._redact: Redactor = Redactor.from_models(settings)
        self._cached: tuple[tuple[str, ...], bytes] | None = None  # (event hashes, body) from wire_size

    async def open(self) -> None:
        settings = self.settings
        if not settings.url:
            raise FatalSinkError("url is required when the sink is enabled")
        try:
            self._key = settings.signing_key()
        except ValueError as exc:
            raise FatalSinkError(str(exc)) from None
        verify: ssl.SSLContext | bool = settings.tls_verify
        if settings.tls_verify and settings.ca_file is not None:
            try:
                verify = ssl.create_default_context(cafile=str(settings.ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise FatalSinkError(f"ca_file {settings.ca_file} cannot be loaded: {exc}") from None
        headers = {"user-agent": USER_AGENT}
        headers.update({name: value.get_secret_value() for name, value in settings.headers.items()})
        if settings.bearer_token is not None:
            headers["authorization"] = f"Bearer {settings.bearer_token.get_secret_value()}"
        key_text = self._key.decode("utf-8", "replace") if self._key is not None else None
        if key_text:
            remember(key_text)  # a key read from hmac_secret_file: the process's redactor learns it too
        self._redact = current().union(Redactor.from_models(settings, secrets=[key_text] if key_text else []))
        await self.close()
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.retry.timeout_ms / 1000),
            follow_redirects=False,
            http2=settings.http2,
            verify=verify,
            limits=httpx.Limits(
                max_connections=settings.max_connections, max_keepalive_connections=settings.max_connections
            ),
            headers=headers,
        )
        log.info(
            "sink opened",
            sink=self.name,
            kind="http",
            host=httpx.URL(settings.url).host,
            http2=settings.http2,
            gzip=settings.gzip,
            signed=self._key is not None,
        )

    async def write(self, batch: list[SinkRecord]) -> int:
        if not batch:
            return 0
        client, url = self._client, self.settings.url
        if client is None or not url:
            raise SinkUnavailable(f"sink {self.name} is not open")
        content, headers = self.request_parts(batch)
        with transport_errors("http request", self._redact):
            response = await client.post(url, content=content, headers=headers)
        status = response.status_code
        if self.settings.is_success(status):
            return len(batch)
        body = excerpt(response, BODY_IN_ERROR, self._redact)
        message = self._redact(f"http {status} {response.reason_phrase}" + (f": {body}" if body else ""))
        raise_for_status(response, message, self.settings.retry.is_retryable_status)
        return 0  # unreachable: raise_for_status always raises

    def request_parts(self, batch: list[SinkRecord]) -> tuple[bytes, dict[str, str]]:
        """The exact body bytes and the per-request headers of a batch (the client adds the static ones)."""
        settings = self.settings
        body = self._body(batch)
        headers = {"content-type": "application/json", settings.idempotency_header: idempotency_key(batch)}
        if settings.gzip:
            headers["content-encoding"] = "gzip"
        if self._key is not None:
            headers[settings.signature_header] = signature(self._key, body)
        return body, headers

    def wire_size(self, batch: list[SinkRecord]) -> int:
        """Bytes of the request body (after gzip when it is on), for the bandwidth limit. The body is kept
        for the `write` of the same batch that follows, so a gzipped batch is compressed once."""
        return len(self._body(batch, keep=True))

    def _body(self, batch: list[SinkRecord], *, keep: bool = False) -> bytes:
        key = tuple(r.event_hash for r in batch)
        cached, self._cached = self._cached, None
        if cached is not None and cached[0] == key:
            body = cached[1]
        else:
            body = b"[" + b",".join(_entry(r) for r in batch) + b"]"
            if self.settings.gzip:
                body = gzip.compress(body, compresslevel=6, mtime=0)
        if keep:
            self._cached = (key, body)
        return body

    async def close(self) -> None:
        client, self._client = self._client, None
        await close_quietly(client, self.name)

    async def health(self) -> dict[str, Any]:
        return {"sink": self.name, "ok": self._client is not None}


def idempotency_key(batch: list[SinkRecord]) -> str:
    """Hex sha256 of the batch's event hashes in body order, joined by newlines: one key per request
    body (the same events in the same order), never one key for two different bodies."""
    return hashlib.sha256("\n".join(r.event_hash for r in batch).encode()).hexdigest()


def signature(key: bytes, body: bytes) -> str:
    """The signature header value: "sha256=" + hex HMAC-SHA256 of the body bytes as sent."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def _entry(record: SinkRecord) -> bytes:
    # {"event_hash": "...", "event": <canonical body>} without re-encoding the body.
    return b'{"event_hash":"' + record.event_hash.encode() + b'","event":' + record.body + b"}"
