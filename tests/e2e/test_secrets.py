"""No secret leaves in clear: distinct secrets for every sink and for Kafka, receivers that echo the
request's headers (Authorization included) back in their 401 bodies, then a scan of the worker's log,
`config show` (text and JSON) and every DLQ header for each secret in every form it travels in."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from pipeline.redact import MASK, SHORT_SECRET
from tests.e2e.conftest import Stack
from tests.e2e.events_gen import make_stream
from tests.http_webhook_server import Webhook, webhook_server
from tests.support import count_rows, poll, produce, read_topic, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

EVENTS = 4
HTTP_TOKEN = "ht_9f8e7d6c5b4a"
HTTP_HMAC = "hm-secret-51"
HTTP_HEADER = "q7"  # a static header value shorter than the old 6-character floor
HOOK2_USER, HOOK2_PASSWORD = "hookuser", "hp5"
LOKI_TOKEN = "glc_eyJrIjoi0123456789"
LOKI2_USER, LOKI2_PASSWORD = "lokiuser", "lp7x"
KAFKA_USER, KAFKA_PASSWORD = "kafkauser", "kz4"  # configured, unused: no SASL mechanism on the test broker
ECHOING_SINKS = ("http", "hook2", "loki", "loki2")


def with_userinfo(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.netloc}"))


def query_string_dsn(dsn: str) -> tuple[str, str]:
    """The DSN with its password moved into the query string (?password=...), and that password."""
    parts = urlsplit(dsn)
    assert parts.password, "the test database needs a password"
    netloc = f"{parts.username}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc, query=f"password={quote(parts.password)}")), parts.password


def forms(secret: str) -> set[str]:
    return {secret, quote(secret, safe="")}


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def leaks(text: str, secrets: set[str]) -> list[str]:
    """The secrets found in `text`: anywhere for long ones, standing alone for short ones (how the
    redactor matches them; see pipeline.redact)."""
    found = []
    for secret in secrets:
        if len(secret) >= SHORT_SECRET:
            if secret in text:
                found.append(secret)
        elif re.search(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", text):
            found.append(secret)
    return found


async def test_no_secret_in_logs_config_show_or_dlq_headers(stack: Stack, tmp_path: Path) -> None:
    dsn, db_password = query_string_dsn(stack.dsn)
    config = tmp_path / "pipeline.yaml"
    config.write_text("sinks:\n  hook2: {type: http, enabled: true}\n  loki2: {type: loki, enabled: true}\n")
    hook = Webhook(echo_status=401)
    with webhook_server(hook) as url:
        base = url.removesuffix("/hook")
        stack.extra_env.update(
            PIPELINE_CONFIG=str(config),
            TSDB_DSN=dsn,
            TSDB_MAX_RETRIE="2",  # a misspelt setting: a structured warning in the log
            KAFKA_SASL_USERNAME=KAFKA_USER,
            KAFKA_SASL_PASSWORD=KAFKA_PASSWORD,
            SINK_DEFAULT_BATCH_SIZE="50",
            SINK_DEFAULT_LINGER_MS="50",
            SINK_DEFAULT_TIMEOUT_MS="5000",
            HTTP_ENABLED="true",
            HTTP_URL=url,
            HTTP_BEARER_TOKEN=HTTP_TOKEN,
            HTTP_HMAC_SECRET=HTTP_HMAC,
            HTTP_HEADERS=f"X-Tenant-Key={HTTP_HEADER}",
            HOOK2_URL=with_userinfo(url, HOOK2_USER, HOOK2_PASSWORD),
            LOKI_ENABLED="true",
            LOKI_URL=base,
            LOKI_BEARER_TOKEN=LOKI_TOKEN,
            LOKI2_URL=base,
            LOKI2_USERNAME=LOKI2_USER,
            LOKI2_PASSWORD=LOKI2_PASSWORD,
        )
        applied = run_cli("topics", "apply", env=stack.env())
        assert applied.returncode == 0, applied.stdout + applied.stderr
        worker = stack.worker()
        await produce(stack.bootstrap, stack.ingest_topic, make_stream(EVENTS, 0, stack.partitions).messages)

        async def dead_lettered() -> dict[str, int]:
            sizes = {s: len(await read_topic(stack.bootstrap, f"{stack.prefix}sink.{s}.dlq")) for s in ECHOING_SINKS}
            return {**sizes, "tsdb rows": await count_rows(stack.dsn, stack.table)}

        try:
            await poll(dead_lettered, lambda n: set(n.values()) == {EVENTS}, timeout=150, what="every DLQ filled")
        except AssertionError:
            print(worker.tail(60))
            raise
        worker.stop()
        shown = [run_cli("config", "show", env=stack.env()), run_cli("config", "show", "--json", env=stack.env())]

    # The receivers did get (and echo) every credential, so a leak would show.
    sent = " ".join(str(r.headers) for r in hook.requests)
    for credential in (HTTP_TOKEN, LOKI_TOKEN, basic(HOOK2_USER, HOOK2_PASSWORD), basic(LOKI2_USER, LOKI2_PASSWORD)):
        assert credential in sent, credential
    assert f"'x-tenant-key': '{HTTP_HEADER}'" in sent

    secrets = {
        *forms(db_password),
        *forms(HTTP_TOKEN),
        *forms(HTTP_HMAC),
        HTTP_HEADER,
        HOOK2_PASSWORD,
        LOKI_TOKEN,
        LOKI2_PASSWORD,
        KAFKA_PASSWORD,
        basic(HOOK2_USER, HOOK2_PASSWORD),
        basic(LOKI2_USER, LOKI2_PASSWORD),
        basic(KAFKA_USER, KAFKA_PASSWORD),
    }
    log = worker.log_path.read_text(errors="replace")
    assert not leaks(log, secrets), leaks(log, secrets)
    warnings = worker.logged("config warning")
    assert warnings and "TSDB_MAX_RETRIES" in warnings[0]["problem"]

    for result in shown:
        assert result.returncode == 0, result.stderr
        assert "sinks.loki2.password" in result.stdout
        assert not leaks(result.stdout + result.stderr, secrets), leaks(result.stdout + result.stderr, secrets)

    for sink in ECHOING_SINKS:
        for record in await read_topic(stack.bootstrap, f"{stack.prefix}sink.{sink}.dlq"):
            text = "\n".join(f"{k}: {v.decode(errors='replace')}" for k, v in record.headers.items())
            assert not leaks(text, secrets), (sink, leaks(text, secrets))
            message = record.headers["pipeline.error.message"].decode()
            assert "401" in message and MASK in message, message  # the echo arrived, masked
