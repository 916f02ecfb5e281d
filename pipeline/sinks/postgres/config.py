"""Settings of the TimescaleDB/PostgreSQL sink (env prefix of the built-in instance: TSDB_)."""

from __future__ import annotations

import re

from pydantic import Field, SecretStr, field_validator

from pipeline.sinks.settings import SinkSettings

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class PostgresSinkSettings(SinkSettings):
    type: str = "postgres"
    dsn: SecretStr | None = Field(None, description="postgresql://user:password@host:port/db")
    table: str = "events"
    db_schema: str = Field("public", alias="schema")
    pool_min_size: int = Field(1, ge=0)
    pool_max_size: int = Field(4, ge=1)

    @field_validator("table", "db_schema")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _IDENT.match(value):
            raise ValueError(f"{value!r} is not a plain SQL identifier (letters, digits, _; max 63)")
        return value

    def require_runnable(self) -> None:
        if self.dsn is None or not self.dsn.get_secret_value():
            raise ValueError("dsn is required when the sink is enabled")
