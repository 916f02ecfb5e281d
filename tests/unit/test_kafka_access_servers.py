"""`check_kafka_access` reads the bootstrap servers as the clients do: a server without a port is port 9092
(it used to fail with a traceback: `int('notahostport')`)."""

from __future__ import annotations

from typing import Any

import pytest

import pipeline.kafka_access as access
from pipeline.config import load_settings


def test_servers_with_and_without_a_port() -> None:
    kafka = load_settings(
        environ={"PIPELINE_CONFIG": "", "KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9093, notahostport,[::1]:9094"}
    ).kafka
    assert kafka.addresses() == [("kafka-1", 9093), ("notahostport", 9092), ("[::1]", 9094)]


async def test_a_server_without_a_port_is_tried_on_9092(monkeypatch: pytest.MonkeyPatch) -> None:
    tried: list[tuple[str, int]] = []

    async def unreachable(host: str, port: int, **_: Any) -> Any:
        tried.append((host, port))
        raise OSError("connection refused")

    monkeypatch.setattr(access, "create_conn", unreachable)
    settings = load_settings(environ={"PIPELINE_CONFIG": "", "KAFKA_BOOTSTRAP_SERVERS": "notahostport,kafka-2:9093"})
    await access.check_kafka_access(settings.kafka, timeout=1)  # none answers: not judged here
    assert tried == [("notahostport", 9092), ("kafka-2", 9093)]
