"""The one redactor (pipeline.redact): configured secrets of any length in every form they travel in,
credentials recognised by shape, and every output it guards (logs, sink errors, DLQ headers, config show)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from pipeline import headers as h
from pipeline import redact as redact_module
from pipeline.config import display_value, iter_effective, load_settings
from pipeline.delivery.routing import TRACEBACK_LIMIT, Attempts, Route, failure_headers
from pipeline.redact import MASK, Redactor, install, mask_url, redact, remember
from pipeline.sinks.base import FatalSinkError, SinkError, SinkRecord
from pipeline.sinks.http.config import HttpSinkSettings
from pipeline.sinks.http.sink import HttpSink
from pipeline.sinks.loki.config import LokiSinkSettings
from pipeline.sinks.loki.sink import LokiSink
from tests.support import run_cli


@pytest.fixture(autouse=True)
def restore_installed() -> Iterator[None]:
    before = redact_module.current()
    yield
    install(before)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize("secret", ["x", "q7", "kz4", "lp7x", "abcde", "s3cr3t", "longer-secret-1", "p@ss/w:rd&1"])
def test_a_configured_secret_of_any_length_is_masked_in_every_form(secret: str) -> None:
    redactor = Redactor([secret])
    for form in (secret, quote(secret, safe=""), json.dumps(secret)[1:-1]):
        text = redactor(f"a {form} b, ({form})")
        assert form not in text.replace(MASK, " ") or form in "a b", text
        assert MASK in text


def test_a_short_secret_is_masked_only_where_it_stands_alone() -> None:
    redactor = Redactor(["42"])
    assert redactor("retry 42 of 1420; pw=42,") == f"retry {MASK} of 1420; pw={MASK},"
    assert Redactor(["longsecret"])("xlongsecretx") == f"x{MASK}x"


def test_the_basic_form_of_user_and_password_is_masked() -> None:
    redactor = Redactor(pairs=[("lokiuser", "lp7x")])
    echoed = f'{{"Authorization-Echo": "{b64("lokiuser:lp7x")}"}}'
    assert b64("lokiuser:lp7x") not in redactor(echoed)


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        ("loki 401: Authorization: Bearer glc_eyJrIjoi0123", "glc_eyJrIjoi0123"),
        ('{"authorization": "Basic dXNlcjpwYXNz"}', "dXNlcjpwYXNz"),
        ("rejected Basic dXNlcjpwYXNz here", "dXNlcjpwYXNz"),
        ("token Bearer abc.def-123_x", "abc.def-123_x"),
        ("connect postgresql://app:hunter2@db:5432/x failed", "hunter2"),
        ("dsn postgresql://app@db/x?sslmode=require&password=hunter2", "hunter2"),
        ("GET https://api.example.com/v1?api_key=AKIA1234&x=1", "AKIA1234"),
        ("POST https://hooks.slack.com/services/T0001/B0002/aB3dE5gH7jK9mN1pQ3sT5vW7", "aB3dE5gH7jK9mN1pQ3sT5vW7"),
        ("POST https://api.example.com/token/abc/send", "/abc/"),
        ("x-api-key: k1", "k1"),
    ],
)
def test_credentials_are_recognised_by_shape(text: str, hidden: str) -> None:
    assert hidden not in Redactor()(text)


@pytest.mark.parametrize(
    "text", ["Bearer authentication required", "Basic authentication failed", "http 401 Unauthorized", "1420 rows"]
)
def test_prose_is_left_alone(text: str) -> None:
    assert Redactor()(text) == text


def test_secrets_are_found_in_every_sink_and_in_kafka(tmp_path: Path) -> None:
    key_file = tmp_path / "hmac"
    key_file.write_text("file-key-77\n")
    settings = load_settings(
        environ={
            "TSDB_DSN": "postgresql://pipeline@db/x?password=pgQ",
            "KAFKA_SASL_USERNAME": "ku",
            "KAFKA_SASL_PASSWORD": "kz4",
            "HTTP_URL": "http://hu:hp5@hook/services/T1/B2/aB3dE5gH7jK9mN1pQ3sT5vW7",
            "HTTP_HMAC_SECRET_FILE": str(key_file),
            "HTTP_HEADERS": "X-Tenant-Key=q7",
            "LOKI_USERNAME": "lu",
            "LOKI_PASSWORD": "lp7x",
        }
    )
    redactor = Redactor.from_models(settings)
    assert {"pgQ", "kz4", "hp5", "aB3dE5gH7jK9mN1pQ3sT5vW7", "file-key-77", "q7", "lp7x"} <= redactor.secrets
    assert {("pipeline", "pgQ"), ("ku", "kz4"), ("hu", "hp5"), ("lu", "lp7x")} <= redactor.pairs


def test_config_show_masks_query_string_passwords_and_url_tokens() -> None:
    settings = load_settings(
        environ={
            "TSDB_DSN": "postgresql://pipeline@db:5432/x?sslmode=require&password=pgQuery9",
            "HTTP_URL": "https://hooks.example.com/services/T1/B2/aB3dE5gH7jK9mN1pQ3sT5vW7?token=qtok55",
            "LOKI_URL": "http://lu:lokipw@loki:3100",
        }
    )
    shown = {path: display_value(path, value) for path, value in iter_effective(settings)}
    assert shown["sinks.tsdb.dsn"] == f"postgresql://pipeline@db:5432/x?sslmode=require&password={MASK}"
    assert shown["sinks.http.url"] == f"https://hooks.example.com/services/T1/B2/{MASK}?token={MASK}"
    assert shown["sinks.loki.url"] == f"http://lu:{MASK}@loki:3100"
    assert mask_url("postgresql://u:p@ss@h/d") == f"postgresql://u:{MASK}@h/d"


def test_config_show_cli_text_and_json_hold_no_secret(tmp_path: Path) -> None:
    env = {
        "PIPELINE_CONFIG": "",
        "TSDB_DSN": "postgresql://pipeline@db/x?password=pgQuery9",
        "HTTP_URL": "https://hooks.example.com/services/T1/B2/aB3dE5gH7jK9mN1pQ3sT5vW7?token=qtok55",
    }
    for args in (("config", "show"), ("config", "show", "--json")):
        result = run_cli(*args, env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        for secret in ("pgQuery9", "aB3dE5gH7jK9mN1pQ3sT5vW7", "qtok55"):
            assert secret not in result.stdout + result.stderr


def test_the_dlq_headers_carry_no_secret_even_where_the_traceback_is_cut() -> None:
    install(Redactor(["s3cr3t-token-value"]))
    try:
        raise FatalSinkError("x" * (TRACEBACK_LIMIT - 10) + " s3cr3t-token-value Authorization: Basic dXNlcjpwYXNz")
    except SinkError as exc:
        error = exc
    added = dict(
        failure_headers(
            [],
            sink="http",
            event_hash="e",
            topic="t",
            partition=0,
            offset=1,
            attempts=Attempts(),
            error=error,
            route=Route("dlq", reason="fatal"),
        )
    )
    for name in (h.ERROR_MESSAGE, h.ERROR_TRACEBACK):
        text = added[name].decode()
        assert "s3cr3t" not in text and "dXNlcjpwYXNz" not in text and "token-value" not in text, name


def test_remember_adds_a_secret_learned_at_run_time() -> None:
    install(Redactor())
    remember("rotated-pw-3")
    assert redact("was rotated-pw-3") == f"was {MASK}"


def _record() -> SinkRecord:
    body = b'{"timestamp":"2026-01-01T00:00:00Z","source":"s","type":"t","payload":{}}'
    return SinkRecord(event_hash="a" * 64, body=body)


def _echo_401(request: httpx.Request) -> httpx.Response:
    return httpx.Response(401, json={"error": "unauthorized", "request_headers": dict(request.headers)})


async def test_the_http_sink_error_carries_no_echoed_credential() -> None:
    settings = HttpSinkSettings(
        name="http",
        url="http://hu:hp5@hook.test/x",
        bearer_token="btok-9",  # type: ignore[arg-type]
        headers={"X-Tenant-Key": "q7"},  # type: ignore[dict-item]
        hmac_secret="hm-51",  # type: ignore[arg-type]
    )
    sink = HttpSink(settings)
    await sink.open()
    assert sink._client is not None
    transport = httpx.MockTransport(_echo_401)
    sink._client = httpx.AsyncClient(transport=transport, headers=sink._client.headers)
    with pytest.raises(FatalSinkError) as raised:
        await sink.write([_record()])
    text = str(raised.value)
    assert "401" in text and "btok-9" not in text and '"q7"' not in text and "hm-51" not in text
    await sink.close()


async def test_the_loki_sink_error_carries_no_echoed_credential() -> None:
    for auth in ({"bearer_token": "glc_eyJrIjoi0123"}, {"username": "lokiuser", "password": "lp7x"}):
        settings = LokiSinkSettings(name="loki", url="http://loki.test:3100", **auth)  # type: ignore[arg-type]
        sink = LokiSink(settings)
        sink._client = httpx.AsyncClient(
            transport=httpx.MockTransport(_echo_401), headers=sink._headers(), auth=sink._auth()
        )
        with pytest.raises(FatalSinkError) as raised:
            await sink.write([_record()])
        text = str(raised.value)
        assert "loki 401" in text
        assert "glc_eyJrIjoi0123" not in text and b64("lokiuser:lp7x") not in text and "lp7x" not in text
        await sink.close()


def test_log_lines_carry_no_secret(tmp_path: Path) -> None:
    """Through the worker's logging set-up: the message, fields and a traceback, structlog and stdlib."""
    script = """
import logging, structlog
from pipeline.logging import configure_logging
from pipeline.redact import Redactor, install
install(Redactor(["zq1"], pairs=[("u", "pw-long-enough")]))
configure_logging("INFO", "json")
log = structlog.get_logger("t")
try:
    raise RuntimeError("boom zq1 https://u:pw-long-enough@h/x")
except RuntimeError as exc:
    log.error("write failed zq1", error=exc, detail={"a": ["zq1"]}, exc_info=True)
logging.getLogger("faust").warning("Authorization: Bearer glc_abc123 zq1")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert len(lines) == 2 and "Traceback" in lines[0]["exception"]
    for secret in ("zq1", "pw-long-enough", "glc_abc123"):
        assert secret not in done.stderr, done.stderr
