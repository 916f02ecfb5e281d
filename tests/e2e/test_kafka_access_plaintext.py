"""SASL settings against a listener that speaks no SASL (a real plaintext broker): the worker's access check
says the listener is the problem, not the credentials (it used to say "rejected the SASL credentials")."""

from __future__ import annotations

import pytest

from pipeline.config import load_settings
from pipeline.kafka_access import KafkaAccessError, check_kafka_access


async def test_sasl_against_a_plaintext_listener_names_the_listener(kafka_bootstrap: str) -> None:
    settings = load_settings(
        environ={
            "PIPELINE_CONFIG": "",
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": "PLAIN",
            "KAFKA_SASL_USERNAME": "u",
            "KAFKA_SASL_PASSWORD": "s3cret",
        }
    )
    with pytest.raises(KafkaAccessError) as caught:
        await check_kafka_access(settings.kafka, timeout=20)
    message = str(caught.value)
    assert "did not answer the SASL handshake" in message and "KAFKA_SECURITY_PROTOCOL" in message
    assert "rejected the SASL credentials" not in message and "s3cret" not in message
