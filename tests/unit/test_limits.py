"""Sizes line up from producer to topic: derived from INGEST_MAX_EVENT_BYTES and checked at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ConfigError, Settings, load_settings
from pipeline.limits import ENVELOPE_BYTES, check_limits, producer_request_bytes, topic_max_message_bytes
from pipeline.topics import TopicCatalog, default_topics_path, load_topics


def settings_with(max_event_bytes: int) -> Settings:
    return load_settings(
        environ={"INGEST_MAX_EVENT_BYTES": str(max_event_bytes), "TSDB_ENABLED": "true", "PIPELINE_CONFIG": ""}
    )


def catalog(settings: Settings, tmp_path: Path, replace: tuple[str, str] | None = None) -> TopicCatalog:
    text = default_topics_path().read_text()
    if replace is not None:
        assert replace[0] in text
        text = text.replace(replace[0], replace[1], 1)
    path = tmp_path / "topics.yaml"
    path.write_text(text)
    return load_topics(path, settings.topic_vars())


@pytest.mark.parametrize("max_event_bytes", [64, 1_048_576, 10_000_000])
def test_the_shipped_topics_fit_any_event_size(tmp_path: Path, max_event_bytes: int) -> None:
    settings = settings_with(max_event_bytes)
    topics = catalog(settings, tmp_path)
    check_limits(max_event_bytes, topics)
    assert topic_max_message_bytes(topics.ingest) == max_event_bytes + ENVELOPE_BYTES
    request = producer_request_bytes(topics)
    for role in ("by_hash", "ingest_dlq", "sink", "sink_retry", "sink_dlq"):
        for spec in topics.role(role):
            assert topic_max_message_bytes(spec) >= request, spec.name


def test_an_ingest_topic_below_the_event_limit_is_a_config_error(tmp_path: Path) -> None:
    settings = settings_with(1_048_576)
    topics = catalog(settings, tmp_path, ('max.message.bytes: "{ingest_message_bytes}"', "max.message.bytes: 1000000"))
    with pytest.raises(ConfigError) as err:
        check_limits(settings.max_event_bytes, topics)
    message = str(err.value)
    assert "INGEST_MAX_EVENT_BYTES=1048576" in message and "max.message.bytes=1000000" in message
    assert topics.ingest.name in message


def test_a_written_topic_below_the_producer_request_size_is_a_config_error(tmp_path: Path) -> None:
    settings = settings_with(1_048_576)
    # The by-hash topic without max.message.bytes: the broker default (1048588) is too small.
    topics = catalog(
        settings,
        tmp_path,
        ('      retention.bytes: -1\n      max.message.bytes: "{message_bytes}"\n\n  # Changelog', "\n  # Changelog"),
    )
    assert "max.message.bytes" not in topics.by_hash.config
    with pytest.raises(ConfigError) as err:
        check_limits(settings.max_event_bytes, topics)
    message = str(err.value)
    assert topics.by_hash.name in message and "max_request_size" in message and "1048588" in message
    assert "INGEST_MAX_EVENT_BYTES" in message


def test_the_worker_refuses_to_start_with_limits_that_do_not_line_up(tmp_path: Path) -> None:
    from pipeline.cli.common import EX_CONFIG
    from tests.support import run_cli

    text = default_topics_path().read_text().replace('"{message_bytes}"', "1000000")
    (tmp_path / "topics.yaml").write_text(text)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "TSDB_ENABLED": "true",
        "TSDB_DSN": "postgresql://u@127.0.0.1:1/db",
        "TOPICS_FILE": str(tmp_path / "topics.yaml"),
        "PIPELINE_DATA_DIR": str(tmp_path / "data"),
        "PIPELINE_CONFIG": "",
    }
    result = run_cli("worker", env=env, cwd=tmp_path)
    assert result.returncode == EX_CONFIG, result.stderr
    assert "max.message.bytes=1000000" in result.stderr and "INGEST_MAX_EVENT_BYTES" in result.stderr
