"""The HTTP webhook sink: unit-level tests against a local receiver (signature, idempotency key, gzip,
success codes, classification, timeouts, secrets, HTTP/2) and one run through a real broker and worker."""

from __future__ import annotations

import gzip
import hashlib
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import ConfigError, load_settings
from pipeline.observability.lag import group_lag, topic_size
from pipeline.reliability.policies import tier_label
from pipeline.sinks.base import FatalSinkError, RetryableSinkError, SinkError, SinkRecord, SinkTimeout, SinkUnavailable
from pipeline.sinks.http.config import HttpSinkSettings
from pipeline.sinks.http.sink import HttpSink, idempotency_key
from pipeline.sinks.registry import create_sink
from tests.e2e.conftest import Stack
from tests.e2e.events_gen import event, make_stream
from tests.http_webhook_server import Reply, Webhook, h2_tls_server, self_signed_cert, webhook_server
from tests.support import poll, produce, run_cli

pytestmark = [pytest.mark.timeout(120)]

SECRET = "whsec-7f3a9c2e-correct-horse"
TOKEN = "tok-5b1d0e8a-battery-staple"
API_KEY = "key-91c2d4e6-static-header"


def records(start: int, count: int) -> list[SinkRecord]:
    out = []
    for n in range(start, start + count):
        body = json.dumps(event(n), sort_keys=True, separators=(",", ":")).encode()
        out.append(SinkRecord(event_hash=hashlib.sha256(body).hexdigest(), body=body))
    return out


def settings(url: str, **fields: Any) -> HttpSinkSettings:
    fields.setdefault("retry", {"timeout_ms": 5000})
    return HttpSinkSettings.model_validate({"name": "hook", "enabled": True, "url": url, **fields})


@asynccontextmanager
async def opened(config: HttpSinkSettings) -> AsyncIterator[HttpSink]:
    sink = create_sink(config)
    assert isinstance(sink, HttpSink)
    await sink.open()
    try:
        yield sink
    finally:
        await sink.close()


async def failure(url: str, reply: Reply | None = None, **fields: Any) -> SinkError:
    hook = Webhook(replies=[reply] if reply else [])
    with webhook_server(hook) as served:
        async with opened(settings(url or served, **fields)) as sink:
            with pytest.raises(SinkError) as err:
                await sink.write(records(0, 3))
    return err.value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- signature ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("gzipped", [False, True])
async def test_signature_verifies_with_the_secret(gzipped: bool) -> None:
    hook = Webhook(secret=SECRET.encode())
    batch = records(0, 5)
    with webhook_server(hook) as url:
        async with opened(settings(url, hmac_secret=SECRET, gzip=gzipped)) as sink:
            assert await sink.write(batch) == 5
    (request,) = hook.requests
    assert request.signature_ok is True and request.status == 200
    assert request.headers["x-pipeline-signature"].startswith("sha256=")
    assert request.headers["content-type"] == "application/json"
    assert request.entries == [{"event_hash": r.event_hash, "event": json.loads(r.body)} for r in batch]


async def test_signature_fails_with_a_wrong_secret() -> None:
    hook = Webhook(secret=b"the-receivers-secret")
    with webhook_server(hook) as url:
        async with opened(settings(url, hmac_secret=SECRET)) as sink:
            with pytest.raises(FatalSinkError) as err:
                await sink.write(records(0, 2))
    assert hook.requests[0].signature_ok is False
    assert "401" in str(err.value) and SECRET not in str(err.value)


async def test_secret_from_a_file_and_a_custom_header(tmp_path: Path) -> None:
    path = tmp_path / "hmac.key"
    path.write_text(SECRET + "\n")
    hook = Webhook(secret=SECRET.encode(), signature_header="X-Hub-Signature-256")
    with webhook_server(hook) as url:
        async with opened(settings(url, hmac_secret_file=str(path), signature_header="X-Hub-Signature-256")) as sink:
            await sink.write(records(0, 2))
    assert hook.requests[0].signature_ok is True
    # An unreadable file is caught by the start-up check, naming the env variable.
    env = {"TSDB_ENABLED": "false", "HTTP_ENABLED": "true", "HTTP_URL": url, "HTTP_HMAC_SECRET_FILE": "/nonexistent"}
    with pytest.raises(ConfigError, match="HTTP_HMAC_SECRET_FILE"):
        load_settings(environ=env).check_runnable()


async def test_unsigned_when_no_secret() -> None:
    hook = Webhook()
    with webhook_server(hook) as url:
        async with opened(settings(url)) as sink:
            await sink.write(records(0, 1))
    assert "x-pipeline-signature" not in hook.requests[0].headers


# -- idempotency key ---------------------------------------------------------------------------------


async def test_idempotency_key_names_exactly_the_request_body() -> None:
    """The key is the same for the same body sent again and differs for any other body (other events,
    another order, a part), so a receiver that follows the Idempotency-Key draft never refuses a request
    (422) and never takes a new request for a repeat; events are deduped by their event_hash."""
    a, b = records(0, 10), records(10, 10)
    hook = Webhook(replies=[Reply(503)], idempotency=True)
    with webhook_server(hook) as url:
        async with opened(settings(url)) as sink:
            with pytest.raises(RetryableSinkError):
                await sink.write(a)
            await sink.write(a)  # the same request again: the same key, processed (the first one failed)
            await sink.write(list(reversed(a)))  # regrouped in another order: another request, another key
            await sink.write(a)  # the same request once more: the receiver answers from its store
            await sink.write(b)
            await sink.write(a[:5])  # a bisected half
    keys = [r.headers["idempotency-key"] for r in hook.requests]
    assert [r.status for r in hook.requests] == [503, 200, 200, 200, 200, 200]
    assert [r.replayed for r in hook.requests] == [False, False, False, True, False, False]
    assert keys[0] == keys[1] == keys[3]
    assert len({keys[0], keys[2], keys[4], keys[5]}) == 4
    expected = hashlib.sha256("\n".join(r.event_hash for r in a).encode()).hexdigest()
    assert keys[0] == expected == idempotency_key(a)
    # Across requests an event is recognised by its event_hash alone: a receiver dedupes by it.
    processed = [h for r in hook.requests if r.status == 200 and not r.replayed for h in r.hashes]
    assert set(processed) == {r.event_hash for r in a + b} and len(processed) == 35


# -- gzip --------------------------------------------------------------------------------------------


async def test_gzip_body_decodes_and_is_deterministic() -> None:
    hook = Webhook(secret=SECRET.encode())
    batch = records(0, 50)
    with webhook_server(hook) as url:
        async with opened(settings(url, hmac_secret=SECRET, gzip=True)) as sink:
            gzipped_size = sink.wire_size(batch)  # the bandwidth limit counts the bytes on the wire
            await sink.write(batch)
            await sink.write(batch)
        async with opened(settings(url, hmac_secret=SECRET)) as plain:
            plain_size = plain.wire_size(batch)
            await plain.write(batch)
    first, second, uncompressed = hook.requests
    assert (gzipped_size, plain_size) == (len(first.raw), len(uncompressed.raw))
    assert first.headers["content-encoding"] == "gzip"
    assert "content-encoding" not in uncompressed.headers
    assert gzip.decompress(first.raw) == first.body == uncompressed.raw
    assert len(first.raw) < len(uncompressed.raw)
    # Same batch, same bytes, same signature: the signature covers the compressed bytes on the wire.
    assert first.raw == second.raw and first.signature_ok and second.signature_ok
    assert first.headers["x-pipeline-signature"] == second.headers["x-pipeline-signature"]


# -- status classification ---------------------------------------------------------------------------


async def test_success_codes_are_configurable() -> None:
    hook = Webhook(replies=[Reply(202), Reply(200)])
    with webhook_server(hook) as url:
        async with opened(settings(url, success_codes="202")) as sink:
            assert await sink.write(records(0, 3)) == 3
            with pytest.raises(FatalSinkError, match="http 200"):
                await sink.write(records(0, 3))
    config = load_settings(environ={"HTTP_SUCCESS_CODES": "200, 201,204"}).sinks["http"]
    assert isinstance(config, HttpSinkSettings) and config.success_codes == ["200", "201", "204"]
    assert config.is_success(204) and not config.is_success(202)
    assert HttpSinkSettings(name="h").is_success(299) and not HttpSinkSettings(name="h").is_success(300)
    with pytest.raises(ConfigError, match="HTTP_SUCCESS_CODES"):
        load_settings(environ={"HTTP_SUCCESS_CODES": "2xx,ok"})


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422, 301])
async def test_other_statuses_are_fatal(status: int) -> None:
    error = await failure("", Reply(status, body=b"nope " + b"x" * 2000))
    assert type(error) is FatalSinkError and not error.retryable
    assert f"http {status}" in str(error) and "nope" in str(error)
    assert len(str(error)) < 400, "the response body is truncated"


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
async def test_retryable_statuses(status: int) -> None:
    error = await failure("", Reply(status))
    assert type(error) is RetryableSinkError and error.retryable
    assert f"http {status}" in str(error) and error.retry_after is None


async def test_retryable_status_follows_the_retry_policy() -> None:
    error = await failure("", Reply(503), retry={"retryable_status": ["429"]})
    assert type(error) is FatalSinkError


async def test_retry_after_seconds_and_http_date_ride_on_the_error() -> None:
    error = await failure("", Reply(429, {"Retry-After": "7"}))
    assert error.retry_after == 7.0
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    error = await failure("", Reply(503, {"Retry-After": when}))
    assert error.retry_after is not None and 25 <= error.retry_after <= 30


async def test_timeout_is_a_sink_timeout() -> None:
    started = time.monotonic()
    error = await failure("", Reply(delay=2.0), retry={"timeout_ms": 300})
    assert type(error) is SinkTimeout and error.retryable
    assert time.monotonic() - started < 1.8


async def test_connection_refused_is_sink_unavailable() -> None:
    error = await failure(f"http://127.0.0.1:{free_port()}/hook")
    assert type(error) is SinkUnavailable and error.retryable


# -- secrets and headers -----------------------------------------------------------------------------


async def test_no_secret_in_any_exception_text() -> None:
    echo = f"got secret={SECRET} token={TOKEN} key={API_KEY} password=pw-0c4e2a91".encode()
    secrets = (SECRET, TOKEN, API_KEY, "pw-0c4e2a91")
    hook = Webhook(replies=[Reply(400, body=echo), Reply(500, body=echo)])
    with webhook_server(hook) as url:
        with_password = url.replace("http://", "http://user:pw-0c4e2a91@")
        config = settings(with_password, hmac_secret=SECRET, bearer_token=TOKEN, headers={"X-Api-Key": API_KEY})
        errors: list[SinkError] = []
        async with opened(config) as sink:
            for _ in range(2):
                with pytest.raises(SinkError) as err:
                    await sink.write(records(0, 1))
                errors.append(err.value)
    refused = settings(f"http://user:pw-0c4e2a91@127.0.0.1:{free_port()}/x", hmac_secret=SECRET, bearer_token=TOKEN)
    async with opened(refused) as sink:
        with pytest.raises(SinkError) as err:
            await sink.write(records(0, 1))
        errors.append(err.value)
    for error in errors:
        text = f"{error!s} {error!r} {error.args}"
        assert not [s for s in secrets if s in text], text
    assert "********" in str(errors[0]) and "http 400" in str(errors[0])
    assert not [s for s in (SECRET, TOKEN, API_KEY) if s in repr(config)]


async def test_bearer_token_and_static_headers_are_sent() -> None:
    hook = Webhook()
    env = {"HTTP_HEADERS": f"X-Api-Key={API_KEY}, X-Tenant=acme", "HTTP_BEARER_TOKEN": TOKEN}
    config = load_settings(environ=env).sinks["http"]
    assert isinstance(config, HttpSinkSettings)
    with webhook_server(hook) as url:
        async with opened(config.model_copy(update={"url": url})) as sink:
            await sink.write(records(0, 1))
    headers = hook.requests[0].headers
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert headers["x-api-key"] == API_KEY and headers["x-tenant"] == "acme"
    assert headers["user-agent"] == "pipeline-http-sink"
    with pytest.raises(ConfigError, match="set by the sink itself"):
        load_settings(environ={"HTTP_HEADERS": "Idempotency-Key=mine"})
    with pytest.raises(ConfigError, match="HTTP_HEADERS"):
        load_settings(environ={"HTTP_HEADERS": "X-Tenant=acme,broken"})


# -- HTTP/2 ------------------------------------------------------------------------------------------


async def test_plain_http_stays_http_1_1_even_with_http2_on() -> None:
    hook = Webhook()
    with webhook_server(hook) as url:
        async with opened(settings(url, http2=True)) as sink:
            await sink.write(records(0, 1))
    assert hook.requests[0].http_version == "HTTP/1.1"


async def test_https_negotiates_http2_and_trusts_ca_file(tmp_path: Path) -> None:
    made = self_signed_cert(tmp_path)
    if made is None:
        pytest.skip("openssl is not installed")
    cert, key = made
    hook = Webhook(secret=SECRET.encode())
    async with h2_tls_server(hook, cert, key) as url:
        async with opened(settings(url, ca_file=str(cert), hmac_secret=SECRET, gzip=True)) as sink:
            assert await sink.write(records(0, 20)) == 20
            assert await sink.write(records(20, 20)) == 20
        async with opened(settings(url)) as untrusted:  # the system store does not know the test CA
            with pytest.raises(SinkUnavailable):
                await untrusted.write(records(0, 1))
    assert [r.http_version for r in hook.requests] == ["HTTP/2", "HTTP/2"]
    assert all(r.signature_ok for r in hook.requests)
    assert len({h for r in hook.requests for h in r.hashes}) == 40


# -- through the broker --------------------------------------------------------------------------------

FAST = {
    "HTTP_BATCH_SIZE": "50",
    "HTTP_LINGER_MS": "50",
    "HTTP_MAX_RETRIES": "5",
    "HTTP_INITIAL_BACKOFF_MS": "200",
    "HTTP_MAX_BACKOFF_MS": "1000",
    "HTTP_TIMEOUT_MS": "5000",
}


async def drained(stack: Stack) -> bool:
    settings_ = load_settings(environ=stack.env())
    tiers = [f"{stack.prefix}sink.http.retry.{tier_label(d)}" for d in settings_.sinks["http"].retry.tier_delays_ms()]
    for topic in [stack.sink_topic("http"), *tiers]:
        lag = await group_lag(stack.bootstrap, f"{stack.app_id}.deliver.http", topic)
        if lag != 0 and await topic_size(stack.bootstrap, topic) != 0:
            return False
    return True


@pytest.mark.e2e
@pytest.mark.timeout(300)
async def test_through_the_broker_signed_and_exactly_once_after_a_500(stack: Stack) -> None:
    unique, duplicates = 400, 100
    hook = Webhook(replies=[Reply(500, body=b"boom")], secret=SECRET.encode())
    with webhook_server(hook) as url:
        stack.extra_env.update(FAST)
        stack.extra_env.update(
            TSDB_ENABLED="false", HTTP_ENABLED="true", HTTP_URL=url, HTTP_HMAC_SECRET=SECRET, HTTP_GZIP="true"
        )
        result = run_cli("topics", "apply", env=stack.env())
        assert result.returncode == 0, result.stdout + result.stderr
        worker = stack.worker()
        await produce(stack.bootstrap, stack.ingest_topic, make_stream(unique, duplicates, stack.partitions).messages)

        async def progress() -> tuple[int, bool]:
            return len(set(hook.delivered())), await drained(stack)

        try:
            await poll(progress, lambda v: v == (unique, True), timeout=180, interval=0.5, what="all delivered")
        except AssertionError:
            print(worker.tail(60))
            raise
        worker.stop()

    delivered = hook.delivered()
    assert len(set(delivered)) == unique
    assert len(delivered) == unique, "an event was delivered twice"
    assert all(r.signature_ok for r in hook.requests), "every request is signed"
    assert all(r.headers["content-encoding"] == "gzip" for r in hook.requests)
    first = hook.requests[0]
    assert first.status == 500 and set(first.hashes) <= set(delivered)
    assert len(hook.requests) >= 2 + (unique - 1) // 50
    assert await topic_size(stack.bootstrap, f"{stack.prefix}sink.http.dlq") == 0
