"""Settings of the TimescaleDB/PostgreSQL sink (env prefix of the built-in instance: TSDB_).

Connection: either `dsn` (TSDB_DSN=postgresql://user:password@host:5432/db) or its parts (TSDB_HOST,
TSDB_PORT, TSDB_DATABASE, TSDB_USER, TSDB_PASSWORD or TSDB_PASSWORD_FILE). Both may be given: a part that
is set overrides the same component of the DSN (as libpq does), e.g. a DSN without a password plus
TSDB_PASSWORD_FILE. The TLS settings (TSDB_SSLMODE, TSDB_SSLROOTCERT, TSDB_SSLCERT, TSDB_SSLKEY) apply to
both forms and override the DSN's own `sslmode=...` query parameters; unset, libpq's defaults apply
(sslmode=prefer, ~/.postgresql/root.crt, PGSSL* environment variables).

Table: `schema`.`table`, created when missing; a TimescaleDB hypertable when the extension is installed
(`hypertable`: auto = when installed, on = required, off = never), a plain table otherwise.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from pipeline.sinks.settings import BatchSize, SinkSettings

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# A PostgreSQL interval literal such as "1 day", "6 hours", "7 days", "1 day 12 hours" or "12:00:00". It
# travels as a bound parameter (never spliced into SQL); the check only catches typos at start.
_INTERVAL = re.compile(r"^\s*[0-9][0-9A-Za-z .:]*$")

SslMode = Literal["disable", "prefer", "require", "verify-ca", "verify-full"]
HypertableMode = Literal["auto", "on", "off"]


class PostgresSinkSettings(SinkSettings):
    type: str = "postgres"
    # Larger than the other sinks' 500: one statement takes the whole batch, and a live worker's delivery
    # rounds (each at most batch_size events) keep up when the host slows; the linger still keeps batches
    # small at low rates. Four runs each at 8,335 ev/s, alternating: delivery-hop p99 232 / 156 / 612 / 179 ms
    # with 2000 against 1,772 / 187 / 648 / 357 ms with 500.
    batch_size: BatchSize = 2000
    dsn: SecretStr | None = Field(None, description="postgresql://user:password@host:port/db")
    host: str | None = Field(None, min_length=1, description="server host name or address (instead of dsn)")
    port: int = Field(5432, ge=1, le=65535, description="server port (with host; overrides the DSN's when set)")
    database: str | None = Field(None, min_length=1, description="database name (instead of dsn)")
    user: str | None = Field(None, min_length=1, description="role to connect as (instead of dsn)")
    password: SecretStr | None = Field(None, description="password of `user` (or use password_file)")
    password_file: Path | None = Field(
        None, description="file holding the password, read at every open; a trailing newline is ignored"
    )
    sslmode: SslMode | None = Field(None, description="disable | prefer | require | verify-ca | verify-full")
    sslrootcert: Path | None = Field(None, description="CA certificate(s) for verify-ca / verify-full")
    sslcert: Path | None = Field(None, description="client certificate (may also hold the key)")
    sslkey: Path | None = Field(None, description="private key of the client certificate")
    table: str = "events"
    db_schema: str = Field("public", alias="schema")
    pool_min_size: int = Field(1, ge=0)
    pool_max_size: int = Field(4, ge=1)
    hypertable: HypertableMode = Field(
        "auto", description="auto: a hypertable when TimescaleDB is installed; on: required; off: a plain table"
    )
    chunk_time_interval: str = Field("1 day", description="hypertable chunk size, a PostgreSQL interval")

    @field_validator("table", "db_schema")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _IDENT.match(value):
            raise ValueError(f"{value!r} is not a plain SQL identifier (letters, digits, _; max 63)")
        return value

    @field_validator("chunk_time_interval")
    @classmethod
    def _interval(cls, value: str) -> str:
        if not _INTERVAL.match(value):
            raise ValueError(f"{value!r} is not a PostgreSQL interval (e.g. '1 day', '6 hours', '7 days')")
        return value.strip()

    @model_validator(mode="after")
    def _consistent(self) -> PostgresSinkSettings:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        if self.sslkey is not None and self.sslcert is None:
            raise ValueError("sslkey needs sslcert (the client certificate it belongs to)")
        if self.pool_min_size > self.pool_max_size:
            raise ValueError(f"pool_min_size ({self.pool_min_size}) must be <= pool_max_size ({self.pool_max_size})")
        return self

    @property
    def has_dsn(self) -> bool:
        return self.dsn is not None and bool(self.dsn.get_secret_value().strip())

    def require_runnable(self) -> None:
        # The message starts with the setting's name: Settings.check_runnable turns it into the env name.
        if self.dsn is not None and self.has_dsn:
            problem = dsn_problem(self.dsn.get_secret_value().strip())
            if problem is not None:
                raise ValueError(f"dsn {problem}")
            return
        if self.host is None and self.database is None and self.user is None:
            raise ValueError("dsn is required when the sink is enabled (or host, database and user)")
        for name in ("host", "database", "user"):
            if getattr(self, name) is None:
                raise ValueError(f"{name} is required when connecting by parts (host, database, user) without dsn")


def dsn_problem(dsn: str) -> str | None:
    """Why asyncpg cannot read `dsn` (its scheme, or a host's port), without repeating the DSN (it may
    hold a password); None when it can."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres"):
        return "must be a postgresql:// URL (postgresql://user:password@host:5432/db)"
    for host in parts.netloc.rpartition("@")[2].split(","):
        if host.endswith("]"):
            continue  # [IPv6] without a port
        _, sep, port = host.rpartition(":")
        if sep and not (port.isdigit() and 1 <= int(port) <= 65535):
            # Not the text itself: with a "/" in an unencoded password, what looks like the port is the password.
            return "has a host whose port is not a number from 1 to 65535 (percent-encode / : @ in a password)"
    return None
