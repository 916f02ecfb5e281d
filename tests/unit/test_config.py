from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import (
    ConfigError,
    display_value,
    iter_effective,
    load_settings,
    load_settings_with_provenance,
)
from tests.support import run_cli


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return path


def test_defaults_without_file_or_env() -> None:
    settings = load_settings(environ={})
    assert settings.ingest_topic == "events.ingest"
    assert settings.idempotency_window_sec == 86400
    assert settings.sinks["tsdb"].enabled and settings.sinks["tsdb"].type == "postgres"
    assert settings.sinks["tsdb"].table == "events"  # type: ignore[attr-defined]
    assert not settings.sinks["loki"].enabled


def test_precedence_per_sink_env_over_default_env_over_file_over_builtin(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
sink_defaults:
  retry: {max_retries: 4, initial_backoff_ms: 200, jitter_factor: 0.3}
sinks:
  tsdb:
    retry: {max_retries: 5, initial_backoff_ms: 300}
""",
    )
    env = {"SINK_DEFAULT_MAX_RETRIES": "6", "TSDB_MAX_RETRIES": "7", "SINK_DEFAULT_INITIAL_BACKOFF_MS": "400"}
    settings, prov = load_settings_with_provenance(path, env)
    retry = settings.sinks["tsdb"].retry
    assert retry.max_retries == 7 and prov.source_of("sinks.tsdb.retry.max_retries") == "env TSDB_MAX_RETRIES"
    assert retry.initial_backoff_ms == 400
    assert prov.source_of("sinks.tsdb.retry.initial_backoff_ms") == "env SINK_DEFAULT_INITIAL_BACKOFF_MS"
    assert retry.jitter_factor == 0.3 and prov.source_of("sinks.tsdb.retry.jitter_factor") == f"{path}:3"
    assert retry.max_backoff_ms == 60000 and prov.source_of("sinks.tsdb.retry.max_backoff_ms") == "default"
    # The default env applies to every sink, the per-sink env only to its own.
    assert settings.sinks["loki"].retry.max_retries == 6


def test_seed_env_names() -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
        "TSDB_DSN": "postgresql://u:pw@db/x",
        "TSDB_TABLE": "readings",
        "TSDB_FAILURE_THRESHOLD": "3",
        "TSDB_OPEN_DURATION_SEC": "300",
        "TSDB_QUEUE_MAX_BYTES": "1073741824",
        "QUEUE_FLUSH_INTERVAL_MS": "5000",
        "LOKI_ENABLED": "true",
        "LOKI_URL": "http://loki:3100",
        "INGEST_TOPIC": "ship.events",
        "IDEMPOTENCY_WINDOW_SEC": "3600",
    }
    settings = load_settings(environ=env)
    tsdb = settings.sinks["tsdb"]
    assert settings.kafka.servers == ["k1:9092", "k2:9092"]
    assert tsdb.table == "readings"  # type: ignore[attr-defined]
    assert tsdb.circuit_breaker.failure_threshold == 3 and tsdb.circuit_breaker.open_duration_sec == 300
    assert tsdb.queue.max_bytes == 1073741824 and tsdb.queue.flush_interval_ms == 5000
    assert settings.sinks["loki"].enabled and settings.sinks["loki"].url == "http://loki:3100"  # type: ignore[attr-defined]
    assert settings.ingest_topic == "ship.events" and settings.idempotency_window_sec == 3600


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"TSDB_MAX_RETRIES": "lots"}, ["sinks.tsdb.retry.max_retries", "TSDB_MAX_RETRIES", "'lots'"]),
        ({"SINK_DEFAULT_JITTER_FACTOR": "2"}, ["jitter_factor", "SINK_DEFAULT_JITTER_FACTOR"]),
        ({"IDEMPOTENCY_WINDOW_SEC": "0"}, ["idempotency_window_sec", "IDEMPOTENCY_WINDOW_SEC"]),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, ["kafka.security_protocol", "KAFKA_SECURITY_PROTOCOL"]),
        ({"SINK_DEFAULT_MAX_RETRYS": "3"}, ["SINK_DEFAULT_MAX_RETRYS", "SINK_DEFAULT_MAX_RETRIES"]),
        ({"TSDB_TABLE": "events; drop table x"}, ["sinks.tsdb.table", "TSDB_TABLE"]),
        (
            {"TSDB_MAX_BACKOFF_MS": "10", "TSDB_INITIAL_BACKOFF_MS": "100"},
            ["sinks.tsdb.retry", "max_backoff_ms"],
        ),
    ],
)
def test_invalid_values_name_the_setting(env: dict[str, str], names: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(environ=env)
    for name in names:
        assert name in str(err.value)


def test_secret_values_are_not_echoed_in_errors() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(environ={"KAFKA_SASL_PASSWORD": "hunter2", "KAFKA_SASL_MECHANISM": "MD5"})
    assert "hunter2" not in str(err.value)


def test_unknown_sink_name_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, "sinks:\n  tsdb:\n    table: a\n  tsbd:\n    table: b\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path, {})
    message = str(err.value)
    assert "tsbd" in message and f"{path}:4" in message and "did you mean 'tsdb'" in message


def test_unknown_sink_type_and_unknown_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"archive.*unknown type 'mongo'"):
        load_settings(write(tmp_path, "sinks:\n  archive:\n    type: mongo\n"), {})
    with pytest.raises(ConfigError, match=r"pipeline.yaml:3: unknown setting sinks.tsdb.retyr"):
        load_settings(write(tmp_path, "sinks:\n  tsdb:\n    retyr: {}\n"), {})
    with pytest.raises(ConfigError, match=r"pipeline.yaml:1: unknown setting 'ingest_topik'"):
        load_settings(write(tmp_path, "ingest_topik: x\n"), {})
    with pytest.raises(ConfigError, match=r"pipeline.yaml:2: invalid YAML"):
        load_settings(write(tmp_path, "a: [1,\nb: }\n"), {})


def test_second_instance_of_a_type(tmp_path: Path) -> None:
    path = write(tmp_path, "sinks:\n  archive:\n    type: postgres\n    enabled: true\n    table: archive\n")
    settings = load_settings(path, {"ARCHIVE_DSN": "postgresql://a@b/c", "ARCHIVE_BATCH_SIZE": "50"})
    archive = settings.sinks["archive"]
    assert archive.type == "postgres" and archive.batch_size == 50 and archive.table == "archive"  # type: ignore[attr-defined]
    assert [s.name for s in settings.enabled_sinks()] == ["tsdb", "archive"]
    assert [s.name for s in settings.topic_vars().sinks] == ["tsdb", "archive"]


def test_runnable_checks_name_what_is_missing() -> None:
    settings = load_settings(environ={})
    with pytest.raises(ConfigError, match="TSDB_DSN"):
        settings.check_runnable()
    with pytest.raises(ConfigError, match="no sink is enabled"):
        load_settings(environ={"TSDB_ENABLED": "false"}).check_runnable()


def test_secrets_are_masked_in_show() -> None:
    settings = load_settings(
        environ={"TSDB_DSN": "postgresql://app:s3cret@db:5432/x", "KAFKA_SASL_PASSWORD": "hunter2"}
    )
    shown = {path: display_value(path, value) for path, value in iter_effective(settings)}
    assert shown["sinks.tsdb.dsn"] == "postgresql://app:********@db:5432/x"
    assert shown["kafka.sasl_password"] == "********"
    assert "s3cret" not in str(shown) and "hunter2" not in str(shown)


def test_config_show_cli_prints_sources_and_masks(tmp_path: Path) -> None:
    path = write(tmp_path, "ingest_topic: from.file\n")
    result = run_cli(
        "config",
        "show",
        "--json",
        env={
            "PIPELINE_CONFIG": str(path),
            "TSDB_DSN": "postgresql://u:topsecret@h/d",
            "TSDB_MAX_RETRIES": "2",
        },
    )
    assert result.returncode == 0, result.stderr
    assert "topsecret" not in result.stdout
    import json

    shown = json.loads(result.stdout)
    assert shown["ingest_topic"] == {"value": "from.file", "source": f"{path}:1"}
    assert shown["sinks.tsdb.retry.max_retries"] == {"value": "2", "source": "env TSDB_MAX_RETRIES"}


def test_worker_refuses_bad_config_with_the_setting_name() -> None:
    result = run_cli(
        "worker", env={"TSDB_MAX_RETRIES": "-1", "TSDB_DSN": "postgresql://u:p@h/d", "PIPELINE_CONFIG": ""}
    )
    assert result.returncode == 78
    assert "TSDB_MAX_RETRIES" in result.stderr and "Traceback" not in result.stderr


def test_deployment_profile_and_retry_preset_sit_below_file_and_env(tmp_path: Path) -> None:
    path = write(tmp_path, "sinks:\n  tsdb:\n    circuit_breaker: {open_duration_sec: 42}\n")
    env = {"DEPLOYMENT_PROFILE": "satcom", "TSDB_RETRY_PRESET": "patient", "TSDB_MAX_RETRIES": "9"}
    settings, prov = load_settings_with_provenance(path, env)
    tsdb = settings.sinks["tsdb"]
    assert tsdb.retry.max_retries == 9  # env beats the preset
    assert (
        tsdb.retry.backoff_multiplier == 2.5
        and prov.source_of("sinks.tsdb.retry.backoff_multiplier") == "preset patient"
    )
    assert tsdb.retry.timeout_ms == 300_000 and prov.source_of("sinks.tsdb.retry.timeout_ms") == "profile satcom"
    assert tsdb.circuit_breaker.open_duration_sec == 42  # the file beats the profile
    assert tsdb.circuit_breaker.failure_threshold == 3  # from the profile
    assert settings.sinks["loki"].retry.backoff_multiplier == 2.0  # the preset was for tsdb only


def test_unknown_profile_or_preset_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"deployment_profile.*DEPLOYMENT_PROFILE"):
        load_settings(environ={"DEPLOYMENT_PROFILE": "moon"})
    with pytest.raises(ConfigError, match="TSDB_RETRY_PRESET"):
        load_settings(environ={"TSDB_RETRY_PRESET": "reckless"})
