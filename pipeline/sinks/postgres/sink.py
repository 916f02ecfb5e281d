"""TimescaleDB/PostgreSQL sink over an asyncpg pool.

Table. `open()` creates `<schema>.<table>` when it is missing (under an advisory lock, so that workers
starting together do not race) with the columns time, event_hash, event_id, source, type, labels, payload
and ingested_at. When the `timescaledb` extension is installed in the database (and `hypertable` is not
"off") the new table becomes a hypertable partitioned on `time`; otherwise it is a plain table. The log line
"sink opened" says which (kind="hypertable" | "plain table"). An existing table is used as it is: its unique
key on (event_hash) or (event_hash, time) becomes the ON CONFLICT target, and it is never converted.

Conflict key. A plain table keeps `event_hash` as its primary key. TimescaleDB requires every unique
constraint of a hypertable to include the partitioning column, so a hypertable's key is (event_hash, time).
For events hashed by content this is the same thing, because the content hash covers the timestamp: one hash
always has one time. For events that carry an idempotency key, the hash covers only the key, so two bodies
with the same key but different timestamps are two rows in a hypertable (a plain table keeps the first).
Such pairs are caught by the pipeline's dedupe stage within its idempotency window; the database key then
only guards redelivery of the same event, which is all the sink needs to be idempotent.

Writing. One batch is one statement (so one transaction and one round trip) on one pooled connection, the
batch bound as two parallel text arrays:

    WITH batch AS MATERIALIZED (SELECT h AS event_hash, t::jsonb AS b FROM unnest($1::text[], $2::text[]) AS u(h, t))
    INSERT INTO <table> (...) SELECT ... FROM batch ON CONFLICT (<key>) DO NOTHING

The pool's connections carry statement_timeout = 90% of timeout_ms as a session setting, so the server
cancels a slow write cleanly before the client-side limit fires. Bodies go up as text and are cast to jsonb
by the server, so numbers stay exact (they are never decoded into Python floats). The whole write is also
bounded by timeout_ms on the client side (a stalled network, not only a slow statement). A session-mode
connection pooler works.

Errors map onto the sink error tree (see `classify`); no message carries the DSN or the password.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import asyncpg.exceptions as pgerr
import structlog
from asyncpg.exceptions._base import DataError as ClientDataError

from pipeline.redact import Redactor, current, remember
from pipeline.reliability.policies import RetryPolicy
from pipeline.sinks.base import (
    FatalSinkError,
    RetryableSinkError,
    Sink,
    SinkError,
    SinkRecord,
    SinkTimeout,
    SinkUnavailable,
)
from pipeline.sinks.postgres.config import PostgresSinkSettings

log = structlog.get_logger(__name__)

# Columns the sink writes; every existing table must have them (ingested_at has a default).
WRITTEN_COLUMNS = ("time", "event_hash", "event_id", "source", "type", "labels", "payload")
PLAIN_KEY: tuple[str, ...] = ("event_hash",)
HYPERTABLE_KEY: tuple[str, ...] = ("event_hash", "time")

TableKind = Literal["hypertable", "plain table"]


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def env_name(sink_name: str, setting: str) -> str:
    """The env variable of one of this sink's settings (TSDB_HYPERTABLE), for error messages."""
    return f"{re.sub(r'[^A-Za-z0-9]', '_', sink_name).upper()}_{setting.upper()}"


# --------------------------------------------------------------------------------------------------
# What is in the database, and what to do about it


@dataclass(frozen=True)
class UniqueKey:
    columns: tuple[str, ...]
    primary: bool


@dataclass(frozen=True)
class TableFacts:
    """What `open()` finds: whether the table exists, its columns and unique keys, and TimescaleDB."""

    exists: bool
    timescaledb_schema: str | None = None  # schema holding the extension's functions; None = not installed
    timescaledb_version: str | None = None
    is_hypertable: bool = False
    columns: frozenset[str] = frozenset()
    unique_keys: tuple[UniqueKey, ...] = ()


@dataclass(frozen=True)
class TablePlan:
    kind: TableKind
    conflict_key: tuple[str, ...]
    statements: tuple[tuple[str, tuple[object, ...]], ...]  # (sql, args), run in order in one transaction
    created: bool


_UNIQUE_KEYS_SQL = """
SELECT i.indisprimary AS is_primary, array_agg(a.attname::text ORDER BY k.ord) AS columns
FROM pg_index AS i
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = $1::text::regclass AND i.indisunique AND i.indimmediate AND i.indisvalid
  AND i.indpred IS NULL AND i.indexprs IS NULL AND k.ord <= i.indnkeyatts
GROUP BY i.indexrelid, i.indisprimary
ORDER BY i.indisprimary DESC, i.indexrelid
"""

_COLUMNS_SQL = """
SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped
"""

_TIMESCALEDB_SQL = """
SELECT n.nspname::text AS schema, e.extversion AS version
FROM pg_extension AS e JOIN pg_namespace AS n ON n.oid = e.extnamespace
WHERE e.extname = 'timescaledb'
"""

_IS_HYPERTABLE_SQL = """
SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_schema = $1 AND hypertable_name = $2)
"""


async def inspect_table(conn: Any, schema: str, table: str) -> TableFacts:
    """Read the facts `plan_table` needs (catalog reads only: no privilege on the table is needed)."""
    qualified = f"{quote_ident(schema)}.{quote_ident(table)}"
    ext = await conn.fetchrow(_TIMESCALEDB_SQL)
    ts_schema = str(ext["schema"]) if ext else None
    ts_version = str(ext["version"]) if ext else None
    if await conn.fetchval("SELECT to_regclass($1::text)", qualified) is None:
        return TableFacts(exists=False, timescaledb_schema=ts_schema, timescaledb_version=ts_version)
    columns = frozenset(str(r[0]) for r in await conn.fetch(_COLUMNS_SQL, qualified))
    keys = tuple(
        UniqueKey(columns=tuple(r["columns"]), primary=bool(r["is_primary"]))
        for r in await conn.fetch(_UNIQUE_KEYS_SQL, qualified)
    )
    hyper = bool(await conn.fetchval(_IS_HYPERTABLE_SQL, schema, table)) if ts_schema is not None else False
    return TableFacts(
        exists=True,
        timescaledb_schema=ts_schema,
        timescaledb_version=ts_version,
        is_hypertable=hyper,
        columns=columns,
        unique_keys=keys,
    )


def create_table_sql(qualified: str, key: tuple[str, ...]) -> str:
    if key == PLAIN_KEY:
        hash_column, primary_key = " event_hash text NOT NULL PRIMARY KEY,", ""
    else:
        hash_column, primary_key = " event_hash text NOT NULL,", f", PRIMARY KEY ({', '.join(key)})"
    return (
        f"CREATE TABLE IF NOT EXISTS {qualified} ("
        " time timestamptz NOT NULL,"
        f"{hash_column}"
        " event_id text,"
        " source text NOT NULL,"
        " type text NOT NULL,"
        " labels jsonb NOT NULL DEFAULT '{}'::jsonb,"
        " payload jsonb,"
        f" ingested_at timestamptz NOT NULL DEFAULT now(){primary_key})"
    )


def plan_table(settings: PostgresSinkSettings, facts: TableFacts) -> TablePlan:
    """Decide the table's kind, its conflict key and the DDL to run. Raises FatalSinkError when the
    settings cannot be met (hypertable=on without TimescaleDB) or an existing table cannot be used."""
    qualified = f"{quote_ident(settings.db_schema)}.{quote_ident(settings.table)}"
    shown = f"{settings.db_schema}.{settings.table}"
    mode = settings.hypertable
    if mode == "on" and facts.timescaledb_schema is None:
        raise FatalSinkError(
            f"hypertable=on ({env_name(settings.name, 'hypertable')}) but the timescaledb extension is not "
            f"installed in this database: run CREATE EXTENSION timescaledb as a superuser, or set "
            f"{env_name(settings.name, 'hypertable')}=auto to fall back to a plain table"
        )
    if not facts.exists:
        if facts.timescaledb_schema is not None and mode != "off":
            create_hypertable = (
                f"SELECT {quote_ident(facts.timescaledb_schema)}.create_hypertable($1::text::regclass, "
                "time_column_name => 'time', if_not_exists => true, chunk_time_interval => $2::text::interval)"
            )
            return TablePlan(
                kind="hypertable",
                conflict_key=HYPERTABLE_KEY,
                statements=(
                    (create_table_sql(qualified, HYPERTABLE_KEY), ()),
                    (create_hypertable, (qualified, settings.chunk_time_interval)),
                ),
                created=True,
            )
        index = quote_ident(f"{settings.table}_time_idx")
        return TablePlan(
            kind="plain table",
            conflict_key=PLAIN_KEY,
            statements=(
                (create_table_sql(qualified, PLAIN_KEY), ()),
                (f"CREATE INDEX IF NOT EXISTS {index} ON {qualified} (time DESC)", ()),
            ),
            created=True,
        )

    missing = [c for c in WRITTEN_COLUMNS if c not in facts.columns]
    if missing:
        raise FatalSinkError(f"table {shown} exists but lacks the column(s) {', '.join(missing)}")
    kind: TableKind = "hypertable" if facts.is_hypertable else "plain table"
    if mode == "on" and not facts.is_hypertable:
        raise FatalSinkError(
            f"hypertable=on ({env_name(settings.name, 'hypertable')}) but table {shown} exists as a plain table, "
            "which the sink does not convert: convert it (its unique key must include time, e.g. PRIMARY KEY "
            f"(event_hash, time); then SELECT create_hypertable('{shown}', 'time', migrate_data => true)), "
            f"use another table, or set {env_name(settings.name, 'hypertable')}=auto"
        )
    return TablePlan(kind=kind, conflict_key=conflict_key(facts, shown), statements=(), created=False)


def conflict_key(facts: TableFacts, shown: str) -> tuple[str, ...]:
    """The existing table's unique key usable as ON CONFLICT target: (event_hash) if there is one (the
    stronger guarantee), else (event_hash, time) in either column order; primary keys first."""
    wanted = (set(PLAIN_KEY), set(HYPERTABLE_KEY))
    for target in wanted:
        for key in facts.unique_keys:  # primary keys come first
            if set(key.columns) == target and len(key.columns) == len(target):
                return key.columns
    found = "; ".join(f"({', '.join(k.columns)})" for k in facts.unique_keys) or "none"
    raise FatalSinkError(
        f"table {shown} has no unique key on (event_hash) or (event_hash, time), which idempotent writes need "
        f"(unique keys found: {found}); add one, e.g. ALTER TABLE {shown} ADD PRIMARY KEY (event_hash)"
    )


# The batch as two parallel arrays, bound as parameters of the one statement: a write is one round trip (a
# temp table filled by COPY took four: BEGIN, COPY, INSERT, COMMIT; 25-30% slower for 200-500 events).
ARRAY_BATCH = "SELECT h AS event_hash, t::jsonb AS b FROM unnest($1::text[], $2::text[]) AS u(h, t)"


def insert_sql(qualified: str, key: Sequence[str], batch: str = ARRAY_BATCH) -> str:
    """The write: every row of `batch` (a query of `event_hash` and the body as jsonb `b`) that is not in the
    table yet, by `key`."""
    columns = ", ".join(WRITTEN_COLUMNS)
    target = ", ".join(quote_ident(c) for c in key)
    # MATERIALIZED: the planner would otherwise inline body::jsonb into each of the six expressions that
    # read it and parse every body six times.
    return (
        f"WITH batch AS MATERIALIZED ({batch}) "
        f"INSERT INTO {qualified} ({columns}) "
        "SELECT (b->>'timestamp')::timestamptz, event_hash, b->>'id', b->>'source', b->>'type', "
        "coalesce(b->'labels', '{}'::jsonb), b->'payload' FROM batch "
        f"ON CONFLICT ({target}) DO NOTHING"
    )


# --------------------------------------------------------------------------------------------------
# The sink


class PostgresSink(Sink):
    health_probes_sink = True  # health() runs SELECT 1 on the pool

    def __init__(self, settings: PostgresSinkSettings) -> None:
        self.name = settings.name
        self.settings = settings
        self._pool: asyncpg.Pool | None = None
        self._table = f"{quote_ident(settings.db_schema)}.{quote_ident(settings.table)}"
        self._insert = insert_sql(self._table, PLAIN_KEY)
        # The DSN whole, its password and query secrets, password, password_file (pipeline.redact).
        self._redactor = current().union(Redactor.from_models(settings))
        self._opened_password = ""
        self.kind: TableKind | None = None
        self.conflict_key: tuple[str, ...] = PLAIN_KEY
        timeout_ms = settings.retry.timeout_ms
        # The server cancels a slow statement (cleanly: the connection stays usable) a little before the
        # client-side limit on the whole write fires.
        self.statement_timeout_ms = max(1, timeout_ms * 9 // 10)

    @property
    def timeout(self) -> float:
        return self.settings.retry.timeout_ms / 1000

    # -- connecting --------------------------------------------------------------------------------

    def _read_password_file(self, path: Path) -> str:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise FatalSinkError(f"cannot read password_file {path}: {reason}") from None
        password = text.rstrip("\r\n")
        if not password:
            raise FatalSinkError(f"password_file {path} is empty")
        self._remember_secret(password)
        return password

    def _remember_secret(self, secret: str) -> None:
        if secret and secret not in self._redactor.secrets:
            self._redactor = self._redactor.union(Redactor([secret]))
            remember(secret)  # a rotated password file: the process's redactor learns the new one

    def _password(self) -> str | None:
        s = self.settings
        if s.password is not None:
            return s.password.get_secret_value()
        if s.password_file is not None:
            return self._read_password_file(s.password_file)
        return None

    async def _password_for_new_connection(self) -> str:
        """Re-read on every new pooled connection, so that a rotated password file is picked up without a
        restart; a file that cannot be read then keeps the password read at open."""
        assert self.settings.password_file is not None
        try:
            return self._read_password_file(self.settings.password_file)
        except FatalSinkError:
            return self._opened_password

    def connect_args(self) -> dict[str, Any]:
        """Keyword arguments of asyncpg.create_pool for the connection settings (reads password_file)."""
        s = self.settings
        dsn = s.dsn.get_secret_value().strip() if s.has_dsn and s.dsn is not None else None
        tls = {
            key: str(value)
            for key, value in (
                ("sslmode", s.sslmode),
                ("sslrootcert", s.sslrootcert),
                ("sslcert", s.sslcert),
                ("sslkey", s.sslkey),
            )
            if value is not None
        }
        if tls:  # asyncpg reads the certificate paths only from the DSN's query (or PGSSL* env variables)
            dsn = _with_query(dsn or "postgresql://", tls)
        password: Any = self._password()
        if s.password_file is not None and password is not None:
            self._opened_password = password
            password = self._password_for_new_connection
        port = s.port if (s.host is not None or "port" in s.model_fields_set or dsn is None) else None
        return {
            "dsn": dsn,
            "host": s.host,
            "port": port,
            "user": s.user,
            "password": password,
            "database": s.database,
        }

    # -- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> None:
        await self.close()
        try:
            args = self.connect_args()
            self._pool = await asyncpg.create_pool(
                args["dsn"],
                host=args["host"],
                port=args["port"],
                user=args["user"],
                password=args["password"],
                database=args["database"],
                min_size=self.settings.pool_min_size,
                max_size=self.settings.pool_max_size,
                command_timeout=self.timeout,
                timeout=self.timeout,
                # A session default, so that a write is one statement (RESET ALL on release keeps it).
                server_settings={
                    "application_name": f"pipeline-{self.name}"[:63],
                    "statement_timeout": str(self.statement_timeout_ms),
                },
            )
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self._table)
                facts = await inspect_table(conn, self.settings.db_schema, self.settings.table)
                plan = plan_table(self.settings, facts)
                for sql, sql_args in plan.statements:
                    await conn.execute(sql, *sql_args)
        except Exception as exc:
            await self.close()
            raise self.classify(exc, opening=True) from None
        except BaseException:
            await self.close()
            raise
        self.kind = plan.kind
        self.conflict_key = plan.conflict_key
        self._insert = insert_sql(self._table, plan.conflict_key)
        log.info(
            "sink opened",
            sink=self.name,
            table=f"{self.settings.db_schema}.{self.settings.table}",
            kind=plan.kind,
            created=plan.created,
            conflict_key=list(plan.conflict_key),
            timescaledb=facts.timescaledb_version,
            hypertable_setting=self.settings.hypertable,
            statement_timeout_ms=self.statement_timeout_ms,
        )

    async def write(self, batch: list[SinkRecord]) -> int:
        if not batch:
            return 0
        pool = self._pool
        if pool is None:
            raise SinkUnavailable(f"sink {self.name} is not open")
        try:
            bodies = [r.body.decode("utf-8") for r in batch]
        except UnicodeDecodeError as exc:
            raise FatalSinkError(f"an event body is not UTF-8: {exc.reason} at byte {exc.start}") from None
        hashes = [r.event_hash for r in batch]
        connected = False
        try:
            async with asyncio.timeout(self.timeout), pool.acquire() as conn:
                connected = True
                status = await self._insert_batch(conn, hashes, bodies)
        except Exception as exc:
            raise self.classify(exc, connecting=not connected) from (exc if connected else None)
        return int(status.rsplit(" ", 1)[-1])

    async def _insert_batch(self, conn: Any, hashes: list[str], bodies: list[str]) -> str:
        """One statement, its own transaction: all of the batch is written or none of it."""
        try:
            status: str = await conn.execute(self._insert, hashes, bodies)
        except asyncio.CancelledError:
            conn.terminate()  # cancelled mid-statement: its state is unknown; the pool opens a new one
            raise
        return status

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

    def classify(self, exc: BaseException, *, connecting: bool = False, opening: bool = False) -> SinkError:
        return classify(exc, self.settings.retry, connecting=connecting, opening=opening, redactor=self._redactor)


# --------------------------------------------------------------------------------------------------
# Classification

# Retryable SQLSTATEs that mean "the database is not available" rather than "try this again".
_UNAVAILABLE_PREFIXES = ("08", "53", "57P", "58")


def classify(
    exc: BaseException,
    policy: RetryPolicy,
    *,
    connecting: bool = False,
    opening: bool = False,
    redactor: Redactor | None = None,
) -> SinkError:
    """Map asyncpg/OS errors onto the sink error tree.

        Client-side conditions are fixed: a timeout is SinkTimeout; a lost or refused connection (OSError,
        asyncpg.InterfaceError, ConnectionDoesNotExistError) is SinkUnavailable; invalid input rejected by
        asyncpg itself (its client-side DataError) is fatal. With `connecting` (the error came while getting a
        connection for a write), every other error is SinkUnavailable too: it cannot be the batch's fault. With
        `opening` (in `open()`), invalid connection settings (a DSN asyncpg cannot parse) are fatal.
        Errors the server reports by SQLSTATE go through `policy.is_retryable_sqlstate` (default: 08, 40, 53, 57,
        58 retryable): retryable ones become SinkTimeout (57014, statement timeout), SinkUnavailable (08, 53, 57P,
        58) or RetryableSinkError (40001 serialization failure, 40P01 deadlock, ...); the rest (22 data, 23
        constraint, 42 syntax/permission, ...) FatalSinkError. Every message passes `redactor` (default: the
    process's, pipeline.redact).
    """

    def text(what: str) -> str:
        return (redactor or current())(what)

    if isinstance(exc, SinkError):
        return exc
    name = type(exc).__name__
    if isinstance(exc, TimeoutError):  # asyncio.TimeoutError is TimeoutError since Python 3.11
        return SinkTimeout(f"postgres did not answer within the time limit ({name})")
    if isinstance(exc, ClientDataError):  # asyncpg rejected a value before sending it (not SQLSTATE 22000)
        return FatalSinkError(text(f"postgres client rejected the data: {exc}"))
    if isinstance(exc, pgerr.ConnectionDoesNotExistError | OSError | ConnectionError) or (
        isinstance(exc, pgerr.InterfaceError) and not isinstance(exc, pgerr.ClientConfigurationError)
    ):
        return SinkUnavailable(text(f"postgres connection lost or refused: {name}: {exc}"))
    sqlstate = str(getattr(exc, "sqlstate", "") or "") if isinstance(exc, asyncpg.PostgresError) else ""
    if connecting:
        detail = f" {sqlstate}" if sqlstate else ""
        return SinkUnavailable(text(f"cannot connect to postgres:{detail} {name}: {exc}"))
    if isinstance(exc, pgerr.InvalidCachedStatementError | pgerr.OutdatedSchemaCacheError):
        # The table changed under a cached statement; asyncpg has dropped the cache: the retry will work.
        return RetryableSinkError(text(f"postgres schema changed during the write: {exc}"))
    if isinstance(exc, pgerr.ClientConfigurationError) or (
        not isinstance(exc, asyncpg.PostgresError) and isinstance(exc, ValueError) and opening
    ):
        return FatalSinkError(text(f"postgres connection settings are invalid: {name}: {exc}"))
    if sqlstate:
        message = text(f"postgres error {sqlstate} ({name}): {getattr(exc, 'message', None) or exc}")
        if not policy.is_retryable_sqlstate(sqlstate):
            return FatalSinkError(message)
        if sqlstate == "57014":  # query_canceled: statement_timeout (or a cancel request)
            return SinkTimeout(message)
        if sqlstate.startswith(_UNAVAILABLE_PREFIXES):
            return SinkUnavailable(message)
        return RetryableSinkError(message)
    return RetryableSinkError(text(f"postgres write failed: {name}: {exc}"))


# --------------------------------------------------------------------------------------------------
# DSN


def _with_query(dsn: str, params: dict[str, str]) -> str:
    parts = urlsplit(dsn)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query += list(params.items())
    if not parts.netloc:  # urlunsplit would drop the "//" of "postgresql://?sslmode=..."
        return f"{parts.scheme}://{parts.path}?{urlencode(query)}"
    return urlunsplit(parts._replace(query=urlencode(query)))
