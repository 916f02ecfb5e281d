"""Bad configuration names itself: a misspelt sink variable, an empty broker list, absurd timeouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_settings, load_settings_with_provenance
from tests.support import run_cli


def warnings_for(env: dict[str, str], config: Path | None = None) -> list[str]:
    return load_settings_with_provenance(config, env)[1].warnings


def test_a_misspelt_sink_variable_warns_with_the_closest_setting() -> None:
    (warning,) = warnings_for({"TSDB_MAX_RETRIE": "5"})
    assert "TSDB_MAX_RETRIE" in warning and "sink 'tsdb'" in warning
    assert "did you mean 'TSDB_MAX_RETRIES'?" in warning
    assert "ignored" in warning


@pytest.mark.parametrize(
    "name", ["HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "KAFKA_HEAP_OPTS", "PATH", "LOKIX_URL", "TSDB"]
)
def test_well_known_and_foreign_variables_are_left_alone(name: str) -> None:
    assert warnings_for({name: "x"}) == []


def test_every_setting_of_every_sink_and_the_global_names_are_known() -> None:
    env = {
        "TSDB_MAX_RETRIES": "4",
        "TSDB_QUEUE_MAX_BYTES": "1000000",
        "TSDB_BREAKER_ENABLED": "false",
        "TSDB_RETRY_PRESET": "patient",
        "LOKI_BEARER_TOKEN": "t",
        "HTTP_HMAC_SECRET": "s",
        "HTTP_RETRYABLE_STATUS": "5xx",
        "SINK_DEFAULT_LINGER_MS": "10",
        "QUEUE_MAX_BYTES": "1000000",
        "STRICT_CONFIG": "false",
    }
    assert warnings_for(env) == []


def test_a_variable_belongs_to_the_sink_with_the_longest_prefix(tmp_path: Path) -> None:
    config = tmp_path / "pipeline.yaml"
    config.write_text("sinks:\n  tsdb_archive: {type: postgres}\n")
    assert warnings_for({"TSDB_ARCHIVE_TABLE": "a"}, config) == []
    (warning,) = warnings_for({"TSDB_ARCHIVE_TABL": "a"}, config)
    assert "sink 'tsdb_archive'" in warning and "TSDB_ARCHIVE_TABLE" in warning


def test_strict_config_turns_the_warning_into_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"TSDB_MAX_RETRIE .*TSDB_MAX_RETRIES.*strict_config is on, from env"):
        load_settings(environ={"TSDB_MAX_RETRIE": "5", "STRICT_CONFIG": "true"})
    config = tmp_path / "pipeline.yaml"
    config.write_text("strict_config: true\n")
    with pytest.raises(ConfigError, match=r"pipeline.yaml:1"):
        load_settings(config, environ={"LOKI_URLL": "http://x"})
    assert load_settings(config, environ={"HTTP_PROXY": "http://proxy:3128"}).strict_config


def test_the_cli_prints_the_warning_on_stderr_and_strict_exits_78(tmp_path: Path) -> None:
    env = {"PIPELINE_CONFIG": "", "TSDB_MAX_RETRIE": "5"}
    shown = run_cli("config", "show", "--json", env=env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "warning: config: env TSDB_MAX_RETRIE" in shown.stderr and "TSDB_MAX_RETRIES" in shown.stderr
    assert "TSDB_MAX_RETRIE" not in shown.stdout  # stdout stays the JSON document
    strict = run_cli("config", "show", env={**env, "STRICT_CONFIG": "true"}, cwd=tmp_path)
    assert strict.returncode == 78
    assert "TSDB_MAX_RETRIES" in strict.stderr and "Traceback" not in strict.stderr


@pytest.mark.parametrize("value", ["", " ", " , "])
def test_an_empty_broker_list_names_the_setting(value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"KAFKA_BOOTSTRAP_SERVERS": value})
    message = str(raised.value)
    assert "kafka.bootstrap_servers" in message and "env KAFKA_BOOTSTRAP_SERVERS" in message
    assert "at least one broker" in message


def test_a_bad_broker_port_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"kafka.bootstrap_servers .*'k1:90921' is not host:port"):
        load_settings(environ={"KAFKA_BOOTSTRAP_SERVERS": "k0:9092,k1:90921"})
    assert load_settings(environ={"KAFKA_BOOTSTRAP_SERVERS": "k0,[::1]:9092,k2:9092,"}).kafka.servers == [
        "k0",
        "[::1]:9092",
        "k2:9092",
    ]


@pytest.mark.parametrize(
    ("env", "setting", "reason"),
    [
        ({"TSDB_TIMEOUT_MS": "36000000"}, "sinks.tsdb.retry.timeout_ms (from env TSDB_TIMEOUT_MS", "3600000 ms (1 h)"),
        ({"SINK_DEFAULT_TIMEOUT_MS": "0"}, "sinks.tsdb.retry.timeout_ms", "greater than 0"),
        ({"LOKI_OPEN_DURATION_SEC": "864000"}, "sinks.loki.circuit_breaker.open_duration_sec", "86400 s (1 day)"),
        ({"HTTP_LINGER_MS": "3600000"}, "sinks.http.linger_ms", "600000 ms (10 min)"),
        ({"KAFKA_SESSION_TIMEOUT_MS": "3600000"}, "kafka.session_timeout_ms", "1800000 ms (30 min)"),
        ({"KAFKA_SESSION_TIMEOUT_MS": "1000"}, "kafka.session_timeout_ms", "6000 ms (6 s)"),
        (
            {"KAFKA_SESSION_TIMEOUT_MS": "10000", "KAFKA_HEARTBEAT_INTERVAL_MS": "10000"},
            "kafka.heartbeat_interval_ms (10000) must be lower than kafka.session_timeout_ms",
            "",
        ),
    ],
)
def test_absurd_timeouts_name_the_setting_and_the_bound(env: dict[str, str], setting: str, reason: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ=env)
    assert setting in str(raised.value) and reason in str(raised.value)


def test_the_satcom_profile_is_within_the_bounds() -> None:
    settings = load_settings(environ={"DEPLOYMENT_PROFILE": "satcom"})
    assert settings.sinks["tsdb"].retry.timeout_ms == 300_000


def test_an_unknown_compression_codec_names_the_setting_and_the_known_ones() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"KAFKA_COMPRESSION_TYPE": "brotli"})
    message = str(raised.value)
    assert "kafka.compression_type" in message and "env KAFKA_COMPRESSION_TYPE" in message
    assert all(codec in message for codec in ("none", "gzip", "snappy", "lz4", "zstd"))
    assert load_settings(environ={"KAFKA_COMPRESSION_TYPE": "zstd"}).kafka.compression_type == "zstd"
