"""One connection to the brokers with the worker's security settings before anything else starts.

aiokafka logs an authentication or TLS failure and then reports only "Unable to bootstrap", and Faust
retries that for ever; a worker with a wrong password would look alive and do nothing. `check_kafka_access`
opens one connection (TLS handshake, API versions, SASL handshake and authentication: exactly what
every client does first) and turns a rejection into one clear error that names the setting to fix.
A broker that cannot be reached is not judged here: the clients' own retries handle that.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from aiokafka import errors as kafka_errors
from aiokafka.conn import create_conn

from pipeline.config import KafkaSettings

__all__ = ["KafkaAccessError", "check_kafka_access"]


class KafkaAccessError(RuntimeError):
    """The brokers refused this worker's credentials or certificates: retrying cannot help."""


_AUTH_ERRORS = (
    kafka_errors.SaslAuthenticationFailed,
    kafka_errors.AuthenticationFailedError,
    kafka_errors.UnsupportedSaslMechanismError,
    kafka_errors.IllegalSaslStateError,
)


async def check_kafka_access(kafka: KafkaSettings, timeout: float = 15.0) -> None:
    """Raise KafkaAccessError when the first broker that answers rejects the SASL credentials or the
    TLS handshake; return when one accepts them, or when none can be reached within `timeout`."""
    kwargs = kafka.client_kwargs()
    for server, (host, port) in zip(kafka.servers, kafka.addresses(), strict=True):
        try:
            conn = await asyncio.wait_for(
                create_conn(host, port, client_id=f"{kafka.client_id}-check", **kwargs),
                timeout,
            )
        except _AUTH_ERRORS as exc:
            raise KafkaAccessError(_auth_message(kafka, server, exc)) from None
        except ssl.SSLError as exc:
            raise KafkaAccessError(_tls_message(kafka, server, exc)) from None
        except (TimeoutError, OSError, kafka_errors.KafkaError):
            continue  # not reachable (yet): the next broker, or leave it to the clients' retries
        conn.close()
        return


def _auth_message(kafka: KafkaSettings, server: str, exc: Exception) -> str:
    source = "KAFKA_SASL_PASSWORD_FILE" if kafka.sasl_password_file else "KAFKA_SASL_PASSWORD"
    reason = _reason(exc)
    if isinstance(exc, kafka_errors.IllegalSaslStateError):  # the listener speaks no SASL: not the password
        return (
            f"Kafka broker {server} did not answer the SASL handshake (protocol {kafka.security_protocol}, "
            f"mechanism {kafka.sasl_mechanism}): {reason}. Is that listener a SASL one? Check "
            "KAFKA_BOOTSTRAP_SERVERS (the port of the SASL listener) and KAFKA_SECURITY_PROTOCOL; not retrying"
        )
    return (
        f"Kafka broker {server} rejected the SASL credentials of user {kafka.sasl_username!r} "
        f"(mechanism {kafka.sasl_mechanism}, protocol {kafka.security_protocol}): {reason}. "
        f"Check KAFKA_SASL_USERNAME, {source} and KAFKA_SASL_MECHANISM; not retrying"
    )


def _tls_message(kafka: KafkaSettings, server: str, exc: ssl.SSLError) -> str:
    hint = "KAFKA_SSL_CAFILE (the CA that signed the broker's certificate)"
    if isinstance(exc, ssl.SSLCertVerificationError) and "hostname" in str(exc.verify_message or ""):
        hint = "the broker address in KAFKA_BOOTSTRAP_SERVERS (it must be a name in the certificate)"
    elif kafka.ssl_certfile is None and "certificate required" in str(exc).lower():
        hint = "KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE (the broker requires a client certificate)"
    return f"TLS handshake with Kafka broker {server} failed: {_reason(exc)}. Check {hint}; not retrying"


def _reason(exc: Any) -> str:
    text = str(getattr(exc, "verify_message", None) or exc).strip()
    return text or type(exc).__name__
