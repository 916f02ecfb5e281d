"""Managed-Kafka settings: one set of security keyword arguments for every client, credentials from env
or mounted files, client certificates, and configurations that cannot work refused at load time."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest

from pipeline.config import ConfigError, known_env_names, load_settings
from tests.tls import TestCA

SCRAM = {
    "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "KAFKA_SASL_USERNAME": "pipeline",
}


def test_every_managed_kafka_setting_has_an_env_name() -> None:
    names = known_env_names({})
    for name in (
        "KAFKA_SECURITY_PROTOCOL",
        "KAFKA_SASL_MECHANISM",
        "KAFKA_SASL_USERNAME",
        "KAFKA_SASL_PASSWORD",
        "KAFKA_SASL_PASSWORD_FILE",
        "KAFKA_SSL_CAFILE",
        "KAFKA_SSL_CERTFILE",
        "KAFKA_SSL_KEYFILE",
        "KAFKA_SSL_KEY_PASSWORD",
        "KAFKA_SSL_KEY_PASSWORD_FILE",
        "KAFKA_SSL_CHECK_HOSTNAME",
        "KAFKA_GROUP_INSTANCE_ID",
    ):
        assert name in names


def test_password_from_a_mounted_file_without_its_newline(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    kafka = load_settings(environ={**SCRAM, "KAFKA_SASL_PASSWORD_FILE": str(secret)}).kafka
    kwargs = kafka.client_kwargs()
    assert kwargs["sasl_plain_password"] == "from-file"
    assert kwargs["security_protocol"] == "SASL_SSL" and kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    secret.write_text("rotated\n")
    assert kafka.client_kwargs()["sasl_plain_password"] == "rotated", "read when a client is made"


def test_client_certificate_and_ca_go_into_the_tls_context(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    client = ca.issue("client", server=False)
    env = {
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CAFILE": str(ca.cert_file),
        "KAFKA_SSL_CERTFILE": str(client.cert),
        "KAFKA_SSL_KEYFILE": str(client.key),
        "KAFKA_SSL_CHECK_HOSTNAME": "false",
    }
    context = load_settings(environ=env).kafka.ssl_context()
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED and not context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "pipeline test CA"),),)]


def test_faust_gets_the_same_credentials_as_the_aiokafka_clients() -> None:
    kafka = load_settings(environ={**SCRAM, "KAFKA_SASL_PASSWORD": "pw"}).kafka
    credentials = kafka.faust_credentials()
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.username == "pipeline" and credentials.password == "pw"
    assert credentials.mechanism.value == "SCRAM-SHA-512" and credentials.protocol.value == "SASL_SSL"
    plain = load_settings(
        environ={
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": "PLAIN",
            "KAFKA_SASL_USERNAME": "u",
            "KAFKA_SASL_PASSWORD": "p",
        }
    ).kafka
    assert plain.faust_credentials().protocol.value == "SASL_PLAINTEXT"
    assert isinstance(
        load_settings(environ={"KAFKA_SECURITY_PROTOCOL": "SSL"}).kafka.faust_credentials(), faust.SSLCredentials
    )
    assert load_settings(environ={}).kafka.faust_credentials() is None


def test_static_membership_ids_per_group() -> None:
    kafka = load_settings(environ={"KAFKA_GROUP_INSTANCE_ID": "pipeline-2"}).kafka
    assert kafka.member_instance_id("app") == "pipeline-2"
    assert kafka.member_instance_id("deliver-tsdb") == "pipeline-2-deliver-tsdb"
    assert load_settings(environ={}).kafka.member_instance_id("app") is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "set kafka.sasl_mechanism"),
        ({"KAFKA_SASL_MECHANISM": "PLAIN"}, "use SASL_SSL"),
        ({**SCRAM}, "kafka.sasl_password (KAFKA_SASL_PASSWORD) or kafka.sasl_password_file"),
        ({**SCRAM, "KAFKA_SASL_USERNAME": ""}, "kafka.sasl_username"),
        ({**SCRAM, "KAFKA_SASL_PASSWORD": "a", "KAFKA_SASL_PASSWORD_FILE": "/x"}, "not both"),
        ({**SCRAM, "KAFKA_SASL_PASSWORD_FILE": "/nonexistent/pw"}, "cannot read /nonexistent/pw"),
        ({"KAFKA_SSL_CAFILE": "/etc/ssl/ca.pem"}, "does not use TLS"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_KEYFILE": "/k"}, "need kafka.ssl_certfile"),
        ({"KAFKA_GROUP_INSTANCE_ID": "pod name"}, "kafka.group_instance_id"),
    ],
)
def test_settings_that_cannot_connect_are_refused_at_load(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(environ=env)
    assert message in str(err.value)
    assert "KAFKA_SASL_PASSWORD=" not in str(err.value)


def test_a_password_read_from_a_file_is_redacted_like_any_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.cli.common import settings_or_exit
    from pipeline.redact import current

    secret = tmp_path / "password"
    secret.write_text("s3cr3t-from-a-mounted-file\n")
    for name, value in {**SCRAM, "KAFKA_SASL_PASSWORD_FILE": str(secret), "PIPELINE_CONFIG": ""}.items():
        monkeypatch.setenv(name, value)
    settings_or_exit(None)
    assert "s3cr3t-from-a-mounted-file" not in current()("SASL login failed for s3cr3t-from-a-mounted-file")
