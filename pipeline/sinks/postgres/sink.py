"""TimescaleDB/PostgreSQL sink over an asyncpg pool.

One batch is one round trip: the hashes and canonical JSON bodies go up as two text arrays and a single
`INSERT ... SELECT ... FROM unnest(...) ON CONFLICT (event_hash) DO NOTHING` unpacks them server-side
(numbers stay exact: the body is never decoded in Python).
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import structlog

from pipeline.reliability.policies import RetryPolicy
from pipeline.sinks.base import (
    FatalSinkError,
    RetryableSinkError,
    Sink,
    SinkRecord,
    SinkTimeout,
    SinkUnavailable,
)
from pipeline.sinks.postgres.config import PostgresSinkSettings

log = structlog.get_logger(__name__)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PostgresSink(Sink):
    def __init__(self, settings: PostgresSinkSettings) -> None:
        self.name = settings.name
        self.settings = settings
        self._pool: asyncpg.Pool | None = None
        self._table = f"{quote_ident(settings.db_schema)}.{quote_ident(settings.table)}"
        self._insert = (
            f"INSERT INTO {self._table} (time, event_hash, event_id, source, type, labels, payload) "
            "SELECT (b->>'timestamp')::timestamptz, h, b->>'id', b->>'source', b->>'type', "
            "coalesce(b->'labels', '{}'::jsonb), b->'payload' "
            "FROM (SELECT u.h, u.t::jsonb AS b FROM unnest($1::text[], $2::text[]) AS u(h, t)) AS rows "
            "ON CONFLICT (event_hash) DO NOTHING"
        )

    @property
    def timeout(self) -> float:
        return self.settings.retry.timeout_ms / 1000

    async def open(self) -> None:
        dsn = self.settings.dsn.get_secret_value() if self.settings.dsn else None
        try:
            self._pool = await asyncpg.create_pool(
                dsn=dsn,
                min_size=self.settings.pool_min_size,
                max_size=self.settings.pool_max_size,
                command_timeout=self.timeout,
                timeout=self.timeout,
            )
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self._table)
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {self._table} ("
                    " time timestamptz NOT NULL,"
                    " event_hash text NOT NULL PRIMARY KEY,"
                    " event_id text,"
                    " source text NOT NULL,"
                    " type text NOT NULL,"
                    " labels jsonb NOT NULL DEFAULT '{}'::jsonb,"
                    " payload jsonb,"
                    " ingested_at timestamptz NOT NULL DEFAULT now())"
                )
                index = quote_ident(f"{self.settings.table}_time_idx")
                await conn.execute(f"CREATE INDEX IF NOT EXISTS {index} ON {self._table} (time DESC)")
        except Exception as exc:
            await self.close()
            raise classify(exc, self.settings.retry) from exc
        except BaseException:
            await self.close()
            raise
        log.info("sink opened", sink=self.name, table=self._table, kind="plain table")

    async def write(self, batch: list[SinkRecord]) -> int:
        if not batch:
            return 0
        if self._pool is None:
            raise SinkUnavailable(f"sink {self.name} is not open")
        hashes = [r.event_hash for r in batch]
        bodies = [r.body.decode("utf-8") for r in batch]
        try:
            status = await asyncio.wait_for(
                self._pool.execute(self._insert, hashes, bodies, timeout=self.timeout), self.timeout * 1.5
            )
        except Exception as exc:
            raise classify(exc, self.settings.retry) from exc
        return int(status.rsplit(" ", 1)[-1])

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 5)
            except Exception:
                pool.terminate()

    async def health(self) -> dict[str, Any]:
        if self._pool is None:
            return {"sink": self.name, "ok": False, "error": "not open"}
        try:
            await self._pool.fetchval("SELECT 1", timeout=self.timeout)
        except Exception as exc:
            return {"sink": self.name, "ok": False, "error": type(exc).__name__}
        return {"sink": self.name, "ok": True}


def classify(exc: BaseException, policy: RetryPolicy) -> Exception:
    """Map asyncpg/OS errors onto the sink error tree. Messages never carry the DSN."""
    if isinstance(exc, RetryableSinkError | FatalSinkError):
        return exc
    if isinstance(exc, asyncio.TimeoutError | TimeoutError | asyncpg.QueryCanceledError):
        return SinkTimeout(f"postgres timed out: {type(exc).__name__}")
    if isinstance(exc, OSError | asyncpg.InterfaceError | ConnectionError):
        return SinkUnavailable(f"postgres unreachable: {type(exc).__name__}: {exc}")
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", "") or ""
        message = f"postgres error {sqlstate}: {getattr(exc, 'message', str(exc))}"
        if policy.is_retryable_sqlstate(sqlstate):
            return SinkUnavailable(message)
        return FatalSinkError(message)
    return SinkUnavailable(f"postgres write failed: {type(exc).__name__}: {exc}")
