"""`pipeline publish` and `pipeline dlq` with no broker to reach: one error line and exit 1; no "Unclosed
AIOKafkaProducer" warning after it (the producer that failed to start is closed), no class name twice."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import run_cli


def test_publish_without_a_broker_fails_cleanly(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"timestamp": "2026-11-22T10:00:00Z", "source": "s", "type": "t"}) + "\n")
    env = {"PIPELINE_CONFIG": "", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}
    result = run_cli("publish", str(events), env=env, timeout=90)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Unclosed" not in result.stderr and "Traceback" not in result.stderr


def test_dlq_stats_without_a_broker_names_the_setting_once(tmp_path: Path) -> None:
    env = {"PIPELINE_CONFIG": "", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}
    result = run_cli("dlq", "stats", env=env, timeout=90)
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: kafka: KafkaConnectionError: ") and "KafkaConnectionError: Kafka" not in line
    assert line.endswith("(no broker answered: check KAFKA_BOOTSTRAP_SERVERS)")


def test_publish_names_what_is_wrong_with_its_source(tmp_path: Path) -> None:
    env = {"PIPELINE_CONFIG": "", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}  # never reached
    directory = run_cli("publish", str(tmp_path), env=env, timeout=60)
    assert directory.returncode == 1 and "a directory, not a file of events" in directory.stderr
    missing = run_cli("publish", str(tmp_path / "none.jsonl"), env=env, timeout=60)
    assert missing.returncode == 1 and "cannot read it: No such file or directory" in missing.stderr
