"""Managed Kafka: the pipeline against a broker that only lets clients in over SASL_SSL with a client
certificate (mutual TLS), as MSK, Confluent Cloud or Strimzi run them.

The broker is the devstack broker with a SASL_SSL listener (pipeline.devstack.kafka.SaslSslListener): a CA
and the broker's certificate are made here (tests/tls.py), the SCRAM users by the broker's own
`StorageTool format --add-scram`. Because the listener requires a client certificate and SASL, a client
the pipeline opens without the settings (Faust's consumer, producer and admin, the delivery consumers, the
retry/DLQ producers, the watchdog probe, the topics admin, the publisher) cannot connect at all: events
landing in PostgreSQL prove every client got them from KafkaSettings.client_kwargs().
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.devstack.kafka import KafkaBroker, SaslSslListener
from tests.e2e.conftest import Stack
from tests.e2e.events_gen import event
from tests.support import REPO, count_rows, poll, run_cli
from tests.tls import TestCA

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

USER = "pipeline-worker"
PASSWORD = "s3cr3t-Pa55word"
EVENTS = 30


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KafkaBroker, TestCA, dict[str, str]]]:
    """A broker with a SASL_SSL listener requiring client certificates, and the client-side env for it."""
    root = tmp_path_factory.mktemp("sasl-ssl")
    ca = TestCA(root / "pki")
    broker_cert = ca.issue("broker", server=True)
    client = ca.issue("client", server=False)
    listener = SaslSslListener(keystore_pem=broker_cert.bundle, users={USER: PASSWORD}, client_ca_pem=ca.cert_file)
    broker = KafkaBroker(state_dir=root / "broker", sasl_ssl=listener, heap="384m")
    broker.start(120)
    password_file = root / "secrets" / "kafka-password"
    password_file.parent.mkdir()
    password_file.write_text(PASSWORD + "\n")  # as a mounted Secret often is: with a trailing newline
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": broker.sasl_ssl_bootstrap,
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": USER,
        "KAFKA_SASL_PASSWORD_FILE": str(password_file),
        "KAFKA_SSL_CAFILE": str(ca.cert_file),
        "KAFKA_SSL_CERTFILE": str(client.cert),
        "KAFKA_SSL_KEYFILE": str(client.key),
    }
    try:
        yield broker, ca, env
    finally:
        broker.stop()


def _clean_env(env: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    return {**base, **env}


async def test_worker_delivers_end_to_end_over_sasl_ssl_with_scram_and_mutual_tls(
    secured: tuple[KafkaBroker, TestCA, dict[str, str]], postgres_dsn: str, unique_id: str, tmp_path: Path
) -> None:
    broker, _, security = secured
    stack = Stack(
        bootstrap=broker.sasl_ssl_bootstrap,
        dsn=postgres_dsn,
        uid=unique_id,
        workdir=tmp_path,
        partitions=2,
        extra_env={**security, "KAFKA_GROUP_INSTANCE_ID": f"w{unique_id}-0"},
    )
    worker = stack.worker()  # applies the topics itself (TOPICS_AUTO_APPLY) through the admin client
    try:
        events = tmp_path / "events.jsonl"
        events.write_text("".join(json.dumps(event(n)) + "\n" for n in range(EVENTS)))
        published = run_cli("publish", str(events), env=_clean_env(stack.env()))
        assert published.returncode == 0, published.stderr

        async def rows() -> int:
            assert worker.running, "the worker exited:\n" + worker.tail()
            return await count_rows(postgres_dsn, stack.table)

        await poll(rows, lambda n: n == EVENTS, timeout=120, what=f"{EVENTS} rows over SASL_SSL")
        assert PASSWORD not in worker.log_path.read_text(errors="replace")
    finally:
        worker.stop()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_topics_apply_logs_in_with_each_mechanism_and_a_password_from_env(
    secured: tuple[KafkaBroker, TestCA, dict[str, str]], unique_id: str, mechanism: str
) -> None:
    _, _, security = secured
    env = {
        **{k: v for k, v in security.items() if k != "KAFKA_SASL_PASSWORD_FILE"},
        "KAFKA_SASL_MECHANISM": mechanism,
        "KAFKA_SASL_PASSWORD": PASSWORD,
        "TOPIC_PREFIX": f"t{unique_id}.",
        "INGEST_TOPIC": f"t{unique_id}.events.ingest",
        "PIPELINE_APP_ID": f"t{unique_id}",
        "KAFKA_TOPIC_PARTITIONS": "1",
        "TOPICS_FILE": str(REPO / "topics.yaml"),
        "PIPELINE_CONFIG": "",
    }
    done = run_cli("topics", "apply", env=_clean_env(env))
    assert done.returncode == 0, done.stderr
    assert "created" in done.stdout


@pytest.mark.parametrize("command", [["worker"], ["topics", "apply"]])
def test_a_wrong_password_fails_fast_with_a_clear_message(
    secured: tuple[KafkaBroker, TestCA, dict[str, str]], unique_id: str, tmp_path: Path, command: list[str]
) -> None:
    _, _, security = secured
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password")
    env = {
        **security,
        "KAFKA_SASL_PASSWORD_FILE": str(wrong),
        "PIPELINE_APP_ID": f"t{unique_id}",
        "TOPIC_PREFIX": f"t{unique_id}.",
        "INGEST_TOPIC": f"t{unique_id}.events.ingest",
        "PIPELINE_DATA_DIR": str(tmp_path / "data"),
        "TSDB_ENABLED": "true",
        "TSDB_DSN": "postgresql://u:p@127.0.0.1:1/db",
        "WEB_ENABLED": "false",
        "PIPELINE_CONFIG": "",
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", *command],
        env=_clean_env(env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,  # Faust and aiokafka alone retry "Unable to bootstrap" for ever
    )
    elapsed = time.monotonic() - started
    assert done.returncode != 0
    assert f"rejected the SASL credentials of user {USER!r}" in done.stderr, done.stderr[-2000:]
    assert "KAFKA_SASL_PASSWORD_FILE" in done.stderr and "not retrying" in done.stderr
    assert "not-the-password" not in done.stdout + done.stderr
    assert elapsed < 30, f"took {elapsed:.1f}s to give up"
