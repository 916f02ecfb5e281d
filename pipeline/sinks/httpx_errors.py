"""What the HTTP-based sinks (HTTP webhook, Loki) share: httpx's exception tree mapped onto the sink error
tree, a response judged by its status, and a client closed without raising."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import structlog

from pipeline.reliability.retry_after import parse_retry_after
from pipeline.sinks.base import FatalSinkError, RetryableSinkError, SinkTimeout, SinkUnavailable

log = structlog.get_logger("pipeline.sinks")


def _same(message: str) -> str:
    return message


@contextmanager
def transport_errors(what: str, redact: Callable[[str], str] = _same) -> Iterator[None]:
    """httpx timeouts become SinkTimeout, every other transport error SinkUnavailable (both retryable)."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise SinkTimeout(redact(f"{what} timed out: {type(exc).__name__}")) from exc
    except httpx.HTTPError as exc:
        raise SinkUnavailable(redact(f"{what} failed: {type(exc).__name__}: {exc}")) from exc


def excerpt(response: httpx.Response, limit: int, redact: Callable[[str], str] = _same) -> str:
    """The start of the response body on one line ("" when the body is empty), redacted before it is cut
    (a cut through a secret would leave a part no redactor recognises)."""
    try:
        text = redact(" ".join(response.text.split()))
    except Exception:  # an undecodable body must not hide the status
        return "<undecodable body>"
    return text if len(text) <= limit else text[:limit] + "..."


def retry_after(response: httpx.Response) -> float | None:
    return parse_retry_after(response.headers.get("retry-after"))


def raise_for_status(response: httpx.Response, message: str, retryable: Callable[[int], bool]) -> None:
    """A status the retry policy lists raises RetryableSinkError (with Retry-After); any other, Fatal."""
    if retryable(response.status_code):
        raise RetryableSinkError(message, retry_after=retry_after(response))
    raise FatalSinkError(message)


async def close_quietly(client: httpx.AsyncClient | None, sink: str) -> None:
    if client is not None:
        try:
            await client.aclose()
        except Exception:  # close must not raise
            log.warning("closing the http client failed", sink=sink, exc_info=True)
