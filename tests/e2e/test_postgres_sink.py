"""The PostgreSQL sink against a real PostgreSQL: COPY writes and their counts, idempotence, connecting by DSN,
by parts and with a password file, the classification of real SQL errors, secrets kept out of errors and
logs, the table it creates or reuses, and one run through the real broker connecting by parts.

TimescaleDB is not installed here: the hypertable path runs against a stand-in `create_hypertable` with
TimescaleDB's signature in a scratch schema (the sink is told the extension lives there); what TimescaleDB
itself does with the call is not tested."""

from __future__ import annotations

import asyncio
import json
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

import asyncpg
import asyncpg.exceptions as pgerr
import pytest
from pydantic import SecretStr

from pipeline.events import parse_event
from pipeline.observability.lag import group_lag
from pipeline.reliability.policies import RetryPolicy
from pipeline.sinks import base
from pipeline.sinks.base import FatalSinkError, RetryableSinkError, SinkRecord, SinkTimeout, SinkUnavailable
from pipeline.sinks.postgres import sink as sinkmod
from pipeline.sinks.postgres.config import PostgresSinkSettings
from pipeline.sinks.postgres.sink import PostgresSink, TableFacts, classify, plan_table
from tests.e2e.conftest import Stack
from tests.e2e.events_gen import event, make_stream
from tests.faults import FaultProxy, through
from tests.support import WorkerProcess, count_rows, fetch, poll, produce, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

# The columns and key of the table the sink created before it wrote with COPY (and still creates).
OLD_DDL = (
    "CREATE TABLE {t} (time timestamptz NOT NULL, event_hash text NOT NULL PRIMARY KEY, event_id text,"
    " source text NOT NULL, type text NOT NULL, labels jsonb NOT NULL DEFAULT '{{}}'::jsonb, payload jsonb,"
    " ingested_at timestamptz NOT NULL DEFAULT now())"
)
# The statement the sink wrote with before COPY: two text arrays unpacked by unnest.
OLD_INSERT = (
    "INSERT INTO {t} (time, event_hash, event_id, source, type, labels, payload) "
    "SELECT (b->>'timestamp')::timestamptz, h, b->>'id', b->>'source', b->>'type', "
    "coalesce(b->'labels', '{{}}'::jsonb), b->'payload' "
    "FROM (SELECT u.h, u.t::jsonb AS b FROM unnest($1::text[], $2::text[]) AS u(h, t)) AS rows "
    "ON CONFLICT (event_hash) DO NOTHING"
)


# --------------------------------------------------------------------------------------------------
# Helpers


def record(n: int, **changes: Any) -> SinkRecord:
    body = {**event(n), **changes}
    accepted = parse_event(json.dumps(body).encode(), 1 << 20)
    return SinkRecord(event_hash=accepted.event_hash, body=accepted.body)


def records(start: int, count: int) -> list[SinkRecord]:
    return [record(n) for n in range(start, start + count)]


def dsn_parts(dsn: str) -> tuple[str, int, str]:
    parts = urlsplit(dsn)
    return parts.hostname or "127.0.0.1", parts.port or 5432, parts.path.lstrip("/") or "postgres"


def dsn_for(dsn: str, user: str, password: str | None) -> str:
    host, port, database = dsn_parts(dsn)
    auth = quote(user, safe="") + (":" + quote(password, safe="") if password is not None else "")
    return urlunsplit(("postgresql", f"{auth}@{host}:{port}", f"/{database}", "", ""))


def settings(table: str, dsn: str | None = None, *, timeout_ms: int = 10_000, **fields: Any) -> PostgresSinkSettings:
    values: dict[str, Any] = {
        "name": f"pg{table[-10:]}",
        "enabled": True,
        "table": table,
        "retry": RetryPolicy(timeout_ms=timeout_ms),
        **fields,
    }
    if dsn is not None:
        values["dsn"] = SecretStr(dsn)
    return PostgresSinkSettings(**values)


def error_text(exc: BaseException) -> str:
    """Everything an error can show: its message and its whole traceback, causes included."""
    return str(exc) + "\n" + "".join(traceback.format_exception(exc))


class LogRecorder:
    """Stands in for the sink module's structlog logger and keeps every call."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def _record(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    info = warning = error = exception = debug = _record

    def named(self, event: str) -> list[dict[str, Any]]:
        return [kw for name, kw in self.events if name == event]


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> LogRecorder:
    recorder = LogRecorder()
    monkeypatch.setattr(sinkmod, "log", recorder)
    return recorder


@pytest.fixture
async def admin(postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(postgres_dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def sinks(roles: Any) -> AsyncIterator[Callable[[PostgresSinkSettings], Awaitable[PostgresSink]]]:
    """open(settings) -> an open sink, closed after the test (before the test's roles are dropped)."""
    opened: list[PostgresSink] = []

    async def open_sink(s: PostgresSinkSettings) -> PostgresSink:
        sink = PostgresSink(s)
        opened.append(sink)
        await sink.open()
        return sink

    yield open_sink
    for sink in opened:
        await sink.close()


@dataclass
class Role:
    name: str
    password: str


@pytest.fixture
async def roles(postgres_dsn: str, unique_id: str) -> AsyncIterator[Callable[..., Awaitable[Role]]]:
    """make(suffix, own_schema=None) -> a LOGIN role with a password (dropped with what it owns after)."""
    made: list[str] = []
    conn = await asyncpg.connect(postgres_dsn)

    async def make(suffix: str = "a", *, own_schema: str | None = None) -> Role:
        role = Role(f"r{unique_id}{suffix}", f"Pw{unique_id}:@/?#{suffix}Zq")  # URL-hostile on purpose
        await conn.execute(f"CREATE ROLE \"{role.name}\" LOGIN PASSWORD '{role.password}'")
        made.append(role.name)
        if own_schema:
            await conn.execute(f'CREATE SCHEMA "{own_schema}" AUTHORIZATION "{role.name}"')
        return role

    yield make
    for name in made:
        await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", name)
        await conn.execute(f'DROP OWNED BY "{name}" CASCADE')
        await conn.execute(f'DROP ROLE "{name}"')
    await conn.close()


async def passwords_checked(dsn: str, role: Role) -> bool:
    """Whether the server verifies passwords (the test server does; a `trust` server does not)."""
    try:
        conn = await asyncpg.connect(dsn_for(dsn, role.name, role.password + "wrong"))
    except pgerr.InvalidPasswordError:
        return True
    await conn.close()
    return False


async def backend_of(admin: asyncpg.Connection, sink: PostgresSink) -> int:
    pid = await admin.fetchval(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
        f"pipeline-{sink.name}",
    )
    return int(pid) if pid is not None else 0


# --------------------------------------------------------------------------------------------------
# Writing


async def test_copy_writes_exact_counts_and_returns_inserted_rows(
    postgres_dsn: str, unique_id: str, sinks: Any, logs: LogRecorder
) -> None:
    table = f"events_{unique_id}"
    sink = await sinks(settings(table, postgres_dsn))
    assert logs.named("sink opened")[0]["kind"] == "plain table"
    assert await sink.write(records(0, 1000)) == 1000
    assert await count_rows(postgres_dsn, table) == 1000
    assert await sink.write(records(500, 1000)) == 500  # 500 already there, 500 new
    assert await count_rows(postgres_dsn, table) == 1500
    assert await sink.write([]) == 0

    # Numbers are stored as written: the body is cast to jsonb by the server, never decoded in Python.
    body = (
        '{"id":"exact-1","labels":{"k":"v"},"payload":{"big":123456789012345678901234567890,'
        '"pi":3.14159265358979323846264338327950288,"small":1e-30,"text":"caf\u00e9"},'
        '"source":"s","timestamp":"2026-11-22T10:00:00.123456Z","type":"t"}'
    )
    assert await sink.write([SinkRecord("exact-hash", body.encode())]) == 1
    row = (
        await fetch(
            postgres_dsn,
            f"SELECT time, event_id, source, type, labels->>'k' AS k, payload->>'big' AS big,"
            f" payload->>'pi' AS pi, payload->>'small' AS small, payload->>'text' AS text, ingested_at"
            f' FROM "{table}" WHERE event_hash = $1',
            "exact-hash",
        )
    )[0]
    assert row["big"] == "123456789012345678901234567890"
    assert row["pi"] == "3.14159265358979323846264338327950288"
    assert Decimal(row["small"]) == Decimal("1e-30")  # same value; numeric spells it out
    assert row["text"] == "caf\u00e9" and row["event_id"] == "exact-1" and row["k"] == "v"
    assert row["time"].isoformat() == "2026-11-22T10:00:00.123456+00:00"
    assert row["ingested_at"] is not None


async def test_writing_the_same_batch_twice_inserts_once(postgres_dsn: str, unique_id: str, sinks: Any) -> None:
    table = f"events_{unique_id}"
    sink = await sinks(settings(table, postgres_dsn))
    batch = records(0, 300)
    assert await sink.write(batch) == 300
    assert await sink.write(batch) == 0
    assert await sink.write(batch + batch[:50] + batch[:50]) == 0
    assert await sink.write(records(300, 20) * 3) == 20  # duplicates inside one batch count once
    assert await count_rows(postgres_dsn, table) == 320
    rows = await fetch(postgres_dsn, f"SELECT (payload->>'n')::int AS n FROM \"{table}\"")
    assert sorted(r["n"] for r in rows) == list(range(320))


# --------------------------------------------------------------------------------------------------
# Connecting


async def test_connects_by_dsn_by_parts_and_with_a_password_file(
    postgres_dsn: str, unique_id: str, sinks: Any, roles: Any, tmp_path: Path
) -> None:
    schema = f"s{unique_id}"
    role = await roles(own_schema=schema)
    host, port, database = dsn_parts(postgres_dsn)
    password_file = tmp_path / "password"
    password_file.write_text(role.password + "\n")
    table = f"events_{unique_id}"
    variants: dict[str, dict[str, Any]] = {
        "dsn": {"dsn": dsn_for(postgres_dsn, role.name, role.password)},
        "parts": {"host": host, "port": port, "database": database, "user": role.name, "password": role.password},
        "parts+file": {
            "host": host,
            "port": port,
            "database": database,
            "user": role.name,
            "password_file": password_file,
        },
        "dsn+file": {"dsn": dsn_for(postgres_dsn, role.name, None), "password_file": password_file},
    }
    for n, (variant, fields) in enumerate(variants.items()):
        s = settings(table, schema=schema, **fields)
        s.require_runnable()
        sink = await sinks(s)
        assert sink._pool is not None
        assert await sink._pool.fetchval("SELECT current_user") == role.name, variant
        assert await sink.write(records(n * 10, 10)) == 10, variant
        await sink.close()
    assert await count_rows(postgres_dsn, table) == 0  # not in public: in the role's own schema
    owner = await fetch(postgres_dsn, "SELECT tableowner FROM pg_tables WHERE schemaname = $1", schema)
    assert [r["tableowner"] for r in owner] == [role.name]
    rows = await fetch(postgres_dsn, f'SELECT count(*) AS c FROM "{schema}"."{table}"')
    assert rows[0]["c"] == 40

    if await passwords_checked(postgres_dsn, role):
        password_file.write_text("not-the-password\n")
        with pytest.raises(FatalSinkError, match="28P01") as wrong:
            await sinks(settings(table, schema=schema, **variants["parts+file"]))
        assert role.password not in error_text(wrong.value)


def test_connection_settings_need_a_dsn_or_host_database_and_user() -> None:
    with pytest.raises(ValueError, match=r"^dsn is required"):
        settings("t").require_runnable()
    with pytest.raises(ValueError, match=r"^database is required"):
        settings("t", host="db", user="u").require_runnable()
    with pytest.raises(ValueError, match="password or password_file"):
        settings("t", host="db", password="x", password_file=Path("/p"))
    settings("t", host="db", database="d", user="u").require_runnable()
    settings("t", "postgresql://u@db/d").require_runnable()


async def test_tls_settings_reach_the_driver(postgres_dsn: str, unique_id: str, sinks: Any, tmp_path: Path) -> None:
    """TLS itself is not tested (the test server has no certificate); the settings reach asyncpg, which
    applies libpq's rules, and a server without TLS refuses sslmode=require."""
    root = tmp_path / "root.crt"
    s = settings("t", "postgresql://u:p%40ss@db:6543/d?sslmode=disable&application_name=x", sslmode="verify-full")
    s = s.model_copy(update={"sslrootcert": root, "sslcert": tmp_path / "c.crt", "sslkey": tmp_path / "c.key"})
    args = PostgresSink(s).connect_args()
    parts = urlsplit(args["dsn"])
    assert parts.netloc == "u:p%40ss@db:6543" and parts.path == "/d"
    assert parse_qs(parts.query) == {
        "application_name": ["x"],
        "sslmode": ["verify-full"],
        "sslrootcert": [str(root)],
        "sslcert": [str(tmp_path / "c.crt")],
        "sslkey": [str(tmp_path / "c.key")],
    }
    assert args["port"] is None and args["host"] is None  # the DSN's own host and port stay in force
    host, _, database = dsn_parts(postgres_dsn)
    by_parts = PostgresSink(settings("t", host=host, database=database, user="u", sslmode="disable")).connect_args()
    assert (by_parts["dsn"], by_parts["port"]) == ("postgresql://?sslmode=disable", 5432)

    if (await fetch(postgres_dsn, "SHOW ssl"))[0]["ssl"] == "off":
        with pytest.raises(SinkUnavailable, match="SSL"):
            await sinks(settings(f"events_{unique_id}", postgres_dsn, sslmode="require"))


async def test_password_never_appears_in_errors_or_logs(
    postgres_dsn: str, unique_id: str, sinks: Any, roles: Any, admin: asyncpg.Connection, logs: LogRecorder
) -> None:
    role = await roles()
    await admin.execute(f'GRANT USAGE, CREATE ON SCHEMA public TO "{role.name}"')
    table = f"events_{unique_id}"
    dsn = dsn_for(postgres_dsn, role.name, role.password)
    errors: list[BaseException] = []

    # Nothing listens on that port.
    with pytest.raises(SinkUnavailable) as refused:
        await sinks(settings(table, dsn_for("postgresql://x@127.0.0.1:1/db", role.name, role.password)))
    errors.append(refused.value)
    # A DSN asyncpg cannot parse.
    bad_port = dsn.replace(f":{dsn_parts(postgres_dsn)[1]}/", ":notaport/")
    with pytest.raises(FatalSinkError) as unparsable:
        await sinks(settings(table, bad_port))
    errors.append(unparsable.value)
    # A statement that fails, and a backend terminated mid-write.
    sink = await sinks(settings(table, dsn))
    with pytest.raises(FatalSinkError) as data_error:
        await sink.write([record(1, payload={"nul": "\u0000"})])
    errors.append(data_error.value)
    await admin.execute("BEGIN")
    await admin.execute(f'LOCK TABLE "{table}" IN SHARE MODE')
    writing = asyncio.create_task(sink.write(records(0, 5)))
    pid = await poll(lambda: backend_of(admin, sink), bool, timeout=10, what="the write waiting for the lock")
    await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    with pytest.raises(RetryableSinkError) as terminated:
        await writing
    await admin.execute("ROLLBACK")
    errors.append(terminated.value)
    # Every classified error, with a secret planted in the driver's message.
    planted = pgerr.ConnectionFailureError(f"could not reach {dsn} with {role.password}")
    errors.append(sink.classify(planted))
    errors.append(sink.classify(planted, connecting=True))
    errors.append(sink.classify(pgerr.UndefinedTableError(f"relation {role.password} does not exist")))

    encoded = quote(role.password, safe="")
    for error in errors:
        shown = error_text(error)
        assert role.password not in shown and encoded not in shown, shown
        assert dsn not in shown
    logged = repr(logs.events)
    assert logs.named("sink opened") and role.password not in logged and encoded not in logged


# --------------------------------------------------------------------------------------------------
# Classification of real SQL errors


async def test_data_error_is_fatal_and_nothing_of_the_batch_is_written(
    postgres_dsn: str, unique_id: str, sinks: Any
) -> None:
    table = f"events_{unique_id}"
    sink = await sinks(settings(table, postgres_dsn))
    poison = record(1000, payload={"note": "nul \u0000 byte"})  # valid JSON; jsonb refuses \u0000: 22P05
    with pytest.raises(FatalSinkError, match="22P05"):
        await sink.write([*records(0, 10), poison])
    assert await count_rows(postgres_dsn, table) == 0
    raw_nul = SinkRecord("raw-nul", json.dumps(event(1)).replace('"c"', '"\x00"').encode())  # 22021 in text
    with pytest.raises(FatalSinkError, match="22"):
        await sink.write([raw_nul])
    not_utf8 = SinkRecord("latin1", b'{"source":"caf\xe9"}')
    with pytest.raises(FatalSinkError, match="UTF-8"):
        await sink.write([not_utf8])
    assert await sink.write(records(0, 10)) == 10  # the connection is fine afterwards


async def test_constraint_violations_are_fatal(
    postgres_dsn: str, unique_id: str, sinks: Any, admin: asyncpg.Connection
) -> None:
    table = f"events_{unique_id}"
    sink = await sinks(settings(table, postgres_dsn))
    assert await sink.write(records(0, 5)) == 5
    await admin.execute(f"ALTER TABLE \"{table}\" ADD CONSTRAINT no_forbidden CHECK (source <> 'forbidden')")
    with pytest.raises(FatalSinkError, match="23514"):
        await sink.write([*records(5, 5), record(10, source="forbidden")])
    no_source = SinkRecord("no-source", b'{"payload":{},"timestamp":"2026-11-22T10:00:00Z","type":"t"}')
    with pytest.raises(FatalSinkError, match="23502"):  # source is NOT NULL
        await sink.write([no_source])
    assert await sink.write(records(5, 5)) == 5
    assert await count_rows(postgres_dsn, table) == 10


async def test_permission_denied_is_fatal(
    postgres_dsn: str, unique_id: str, sinks: Any, roles: Any, admin: asyncpg.Connection
) -> None:
    table = f"events_{unique_id}"
    owner = await sinks(settings(table, postgres_dsn))  # the table exists, created by the superuser
    await owner.close()
    reader = await roles("ro")
    await admin.execute(f'GRANT USAGE ON SCHEMA public TO "{reader.name}"')
    await admin.execute(f'GRANT SELECT ON "{table}" TO "{reader.name}"')
    sink = await sinks(settings(table, dsn_for(postgres_dsn, reader.name, reader.password)))
    with pytest.raises(FatalSinkError, match="42501") as denied:
        await sink.write(records(0, 3))
    assert "permission denied" in str(denied.value)
    assert reader.password not in error_text(denied.value)


async def test_statement_timeout_is_a_sink_timeout_and_the_connection_survives(
    postgres_dsn: str, unique_id: str, sinks: Any, admin: asyncpg.Connection
) -> None:
    table = f"events_{unique_id}"
    sink = await sinks(settings(table, postgres_dsn, timeout_ms=2000, pool_min_size=1, pool_max_size=1))
    assert sink.statement_timeout_ms == 1800
    assert sink._pool is not None
    before = await sink._pool.fetchval("SELECT pg_backend_pid()")
    await admin.execute("BEGIN")
    await admin.execute(f'LOCK TABLE "{table}" IN SHARE MODE')  # blocks INSERT, not reads
    started = time.monotonic()
    with pytest.raises(SinkTimeout, match="57014") as timed_out:
        await sink.write(records(0, 50))
    elapsed = time.monotonic() - started
    await admin.execute("ROLLBACK")
    # The server cancelled the statement (57014, QueryCanceledError: not a client-side deadline) once its
    # statement_timeout had passed; the upper bound only says it did not hang (a loaded CI host adds latency).
    assert 1.7 < elapsed < 5.0, elapsed
    assert isinstance(timed_out.value.__cause__, pgerr.QueryCanceledError)
    assert await sink.write(records(0, 50)) == 50
    assert await sink._pool.fetchval("SELECT pg_backend_pid()") == before  # same connection, still usable


async def test_client_side_deadline_is_a_sink_timeout(postgres_dsn: str, unique_id: str, sinks: Any) -> None:
    """A server that does not answer in time (the link holds every packet for 3 s, so neither the write nor the
    server's own statement timeout gets through) -> SinkTimeout at the client's limit; once the link is back the
    next write goes through."""
    proxy = await FaultProxy.before(postgres_dsn).start()
    try:
        sink = await sinks(settings(f"events_{unique_id}", through(postgres_dsn, proxy), timeout_ms=1000))
        proxy.set("slow", delay=3.0)
        started = time.monotonic()
        with pytest.raises(SinkTimeout):
            await sink.write(records(0, 5))
        assert time.monotonic() - started < 1.5
        proxy.set("pass")
        assert await sink.write(records(5, 5)) == 5
    finally:
        await proxy.stop()


async def test_terminated_backend_is_retryable_and_the_retry_writes_everything(
    postgres_dsn: str, unique_id: str, sinks: Any, admin: asyncpg.Connection
) -> None:
    table = f"events_{unique_id}"
    sink = await sinks(settings(table, postgres_dsn))
    await admin.execute("BEGIN")
    await admin.execute(f'LOCK TABLE "{table}" IN SHARE MODE')
    batch = records(0, 200)
    writing = asyncio.create_task(sink.write(batch))
    pid = await poll(lambda: backend_of(admin, sink), bool, timeout=10, what="the write waiting for the lock")
    assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    with pytest.raises(RetryableSinkError) as lost:
        await writing
    await admin.execute("ROLLBACK")
    assert isinstance(lost.value, SinkUnavailable), repr(lost.value)  # 57P01 admin shutdown or connection lost
    assert await count_rows(postgres_dsn, table) == 0
    assert await sink.write(batch) == 200  # the pool opens a new connection
    assert await count_rows(postgres_dsn, table) == 200


async def test_closed_sink_is_unavailable(postgres_dsn: str, unique_id: str, sinks: Any) -> None:
    sink = await sinks(settings(f"events_{unique_id}", postgres_dsn))
    await sink.close()
    with pytest.raises(SinkUnavailable):
        await sink.write(records(0, 1))
    assert (await sink.health())["ok"] is False


def _pg(cls: type[pgerr.PostgresError], message: str = "boom") -> pgerr.PostgresError:
    return cls(message)


CLASSIFICATION: list[tuple[str, BaseException, type[base.SinkError]]] = [
    ("40001 serialization failure", _pg(pgerr.SerializationError), RetryableSinkError),
    ("40P01 deadlock", _pg(pgerr.DeadlockDetectedError), RetryableSinkError),
    ("53300 too many connections", _pg(pgerr.TooManyConnectionsError), SinkUnavailable),
    ("57P01 admin shutdown", _pg(pgerr.AdminShutdownError), SinkUnavailable),
    ("57P03 cannot connect now", _pg(pgerr.CannotConnectNowError), SinkUnavailable),
    ("08006 connection failure", _pg(pgerr.ConnectionFailureError), SinkUnavailable),
    ("57014 statement timeout", _pg(pgerr.QueryCanceledError), SinkTimeout),
    ("connection does not exist", pgerr.ConnectionDoesNotExistError("closed"), SinkUnavailable),
    ("interface error", pgerr.InterfaceError("connection is closed"), SinkUnavailable),
    ("OSError", ConnectionResetError(104, "reset"), SinkUnavailable),
    ("asyncio timeout", TimeoutError(), SinkTimeout),
    ("22P05 untranslatable", _pg(pgerr.UntranslatableCharacterError), FatalSinkError),
    ("22021 bad byte", _pg(pgerr.CharacterNotInRepertoireError), FatalSinkError),
    ("22007 bad datetime", _pg(pgerr.InvalidDatetimeFormatError), FatalSinkError),
    ("23505 unique", _pg(pgerr.UniqueViolationError), FatalSinkError),
    ("23514 check", _pg(pgerr.CheckViolationError), FatalSinkError),
    ("42501 permission", _pg(pgerr.InsufficientPrivilegeError), FatalSinkError),
    ("42P01 undefined table", _pg(pgerr.UndefinedTableError), FatalSinkError),
    ("42703 undefined column", _pg(pgerr.UndefinedColumnError), FatalSinkError),
    ("28P01 bad password", _pg(pgerr.InvalidPasswordError), FatalSinkError),
    ("0A000 cached plan", _pg(pgerr.InvalidCachedStatementError), RetryableSinkError),
]


@pytest.mark.parametrize(("case", "error", "expected"), CLASSIFICATION, ids=[c[0] for c in CLASSIFICATION])
def test_classification_table(case: str, error: BaseException, expected: type[base.SinkError]) -> None:
    classified = classify(error, RetryPolicy())
    assert type(classified) is expected, (case, classified)
    assert classified.retryable == (expected is not FatalSinkError)


def test_classification_follows_the_policy_and_connecting_errors_are_never_fatal() -> None:
    only_connections = RetryPolicy(retryable_sqlstates=["08"])
    assert isinstance(classify(pgerr.SerializationError("x"), only_connections), FatalSinkError)
    assert isinstance(classify(pgerr.SerializationError("x"), RetryPolicy()), RetryableSinkError)
    exact = RetryPolicy(retryable_sqlstates=["40001", "42501"])
    assert isinstance(classify(pgerr.InsufficientPrivilegeError("x"), exact), RetryableSinkError)
    assert isinstance(classify(pgerr.DeadlockDetectedError("x"), exact), FatalSinkError)
    # Connection loss and timeouts do not depend on the list.
    assert isinstance(classify(pgerr.ConnectionDoesNotExistError("x"), only_connections), SinkUnavailable)
    assert isinstance(classify(TimeoutError(), RetryPolicy(retryable_sqlstates=["40"])), SinkTimeout)
    # Failing to get a connection for a write is never the batch's fault.
    refused = classify(pgerr.InvalidPasswordError("password authentication failed"), RetryPolicy(), connecting=True)
    assert isinstance(refused, SinkUnavailable) and "28P01" in str(refused)


# --------------------------------------------------------------------------------------------------
# The table: created, reused, hypertable


async def test_hypertable_on_without_timescaledb_is_a_clear_error(
    postgres_dsn: str, unique_id: str, sinks: Any
) -> None:
    table = f"events_{unique_id}"
    with pytest.raises(FatalSinkError) as missing:
        await sinks(settings(table, postgres_dsn, hypertable="on"))
    message = str(missing.value)
    assert "timescaledb extension is not installed" in message and "_HYPERTABLE=auto" in message
    assert (await fetch(postgres_dsn, "SELECT to_regclass($1) AS t", table))[0]["t"] is None
    await sinks(settings(table, postgres_dsn, hypertable="off"))  # off and auto: a plain table
    assert (await fetch(postgres_dsn, "SELECT to_regclass($1) AS t", table))[0]["t"] is not None


async def test_existing_table_with_event_hash_primary_key_is_reused(
    postgres_dsn: str, unique_id: str, sinks: Any, admin: asyncpg.Connection, logs: LogRecorder
) -> None:
    table = f"events_{unique_id}"
    await admin.execute(OLD_DDL.format(t=f'"{table}"'))
    old = records(0, 100)
    await admin.execute(OLD_INSERT.format(t=f'"{table}"'), [r.event_hash for r in old], [r.body.decode() for r in old])
    sink = await sinks(settings(table, postgres_dsn))
    opened = logs.named("sink opened")[0]
    assert (opened["kind"], opened["created"], opened["conflict_key"]) == ("plain table", False, ["event_hash"])
    assert await sink.write(records(50, 100)) == 50
    assert await count_rows(postgres_dsn, table) == 150


async def test_existing_tables_with_other_keys(
    postgres_dsn: str, unique_id: str, sinks: Any, admin: asyncpg.Connection
) -> None:
    composite = f"events_{unique_id}_c"
    await admin.execute(
        OLD_DDL.format(t=f'"{composite}"').replace(" PRIMARY KEY,", ",")[:-1] + ", UNIQUE (time, event_hash))"
    )
    sink = await sinks(settings(composite, postgres_dsn))
    assert sink.conflict_key == ("time", "event_hash")
    assert await sink.write(records(0, 20)) == 20
    assert await sink.write(records(10, 20)) == 10

    keyless = f"events_{unique_id}_k"
    await admin.execute(OLD_DDL.format(t=f'"{keyless}"').replace(" PRIMARY KEY,", ","))
    with pytest.raises(FatalSinkError, match="no unique key on"):
        await sinks(settings(keyless, postgres_dsn))

    partial = f"events_{unique_id}_p"
    await admin.execute(f'CREATE TABLE "{partial}" (time timestamptz, event_hash text PRIMARY KEY)')
    with pytest.raises(FatalSinkError, match="lacks the column"):
        await sinks(settings(partial, postgres_dsn))

    plain = f"events_{unique_id}_x"
    await admin.execute(OLD_DDL.format(t=f'"{plain}"'))
    facts = replace(
        await sinkmod.inspect_table(admin, "public", plain), timescaledb_schema="public", timescaledb_version="2.x"
    )
    with pytest.raises(FatalSinkError, match="exists as a plain table"):
        plan_table(settings(plain, postgres_dsn, hypertable="on"), facts)
    assert plan_table(settings(plain, postgres_dsn), facts).kind == "plain table"  # auto: used as it is


STAND_IN = """
CREATE FUNCTION {s}.create_hypertable(
    relation regclass, time_column_name name, partitioning_column name = NULL, number_partitions integer = NULL,
    associated_schema_name name = NULL, associated_table_prefix name = NULL,
    chunk_time_interval anyelement = NULL::bigint, create_default_indexes boolean = true,
    if_not_exists boolean = false, partitioning_func regproc = NULL, migrate_data boolean = false,
    chunk_target_size text = NULL, chunk_sizing_func regproc = NULL, time_partitioning_func regproc = NULL
) RETURNS TABLE(hypertable_id integer, schema_name name, table_name name, created boolean)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {s}.calls VALUES (relation::text, time_column_name::text, pg_typeof(chunk_time_interval)::text,
                                  chunk_time_interval::text, if_not_exists, create_default_indexes);
    RETURN QUERY SELECT 1, 'public'::name, 'x'::name, true;
END $$
"""


async def test_hypertable_statements_against_a_timescaledb_stand_in(
    postgres_dsn: str,
    unique_id: str,
    sinks: Any,
    admin: asyncpg.Connection,
    logs: LogRecorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sink believes TimescaleDB is installed in a scratch schema whose `create_hypertable` has the
    extension's (2.x, pre-2.13 API) signature and records its arguments."""
    fake = f"fake_ts_{unique_id}"
    await admin.execute(f'CREATE SCHEMA "{fake}"')
    await admin.execute(
        f'CREATE TABLE "{fake}".calls (relation text, time_column text, interval_type text,'
        " chunk_time_interval text, if_not_exists boolean, default_indexes boolean)"
    )
    await admin.execute(STAND_IN.format(s=f'"{fake}"'))
    real_inspect = sinkmod.inspect_table

    async def with_timescaledb(conn: Any, schema: str, table: str) -> TableFacts:
        facts = await real_inspect(conn, schema, table)
        return replace(facts, timescaledb_schema=fake, timescaledb_version="2.99-stand-in")

    monkeypatch.setattr(sinkmod, "inspect_table", with_timescaledb)
    table = f"events_{unique_id}"
    try:
        sink = await sinks(settings(table, postgres_dsn, hypertable="on", chunk_time_interval="6 hours"))
        opened = logs.named("sink opened")[0]
        assert (opened["kind"], opened["created"], opened["timescaledb"]) == ("hypertable", True, "2.99-stand-in")
        assert opened["conflict_key"] == ["event_hash", "time"]
        calls = await fetch(postgres_dsn, f'SELECT * FROM "{fake}".calls')
        assert [dict(c) for c in calls] == [
            {
                "relation": table,  # regclass text: unqualified and unquoted, as public is on the search path
                "time_column": "time",
                "interval_type": "interval",
                "chunk_time_interval": "06:00:00",
                "if_not_exists": True,
                "default_indexes": True,
            }
        ]
        key = await fetch(
            postgres_dsn,
            "SELECT array_agg(a.attname::text ORDER BY a.attnum) AS cols FROM pg_index i"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
            " WHERE i.indrelid = $1::regclass AND i.indisprimary",
            table,
        )
        assert key[0]["cols"] == ["time", "event_hash"]
        assert await sink.write(records(0, 30)) == 30
        assert await sink.write(records(0, 30)) == 0
        # A second open finds the table: it is not created again, and its key is read back.
        await sink.close()
        again = await sinks(settings(table, postgres_dsn, chunk_time_interval="6 hours"))
        assert (
            again.conflict_key == ("event_hash", "time")
            and len(await fetch(postgres_dsn, f'SELECT * FROM "{fake}".calls')) == 1
        )
    finally:
        await admin.execute(f'DROP SCHEMA "{fake}" CASCADE')


# --------------------------------------------------------------------------------------------------
# Through the real broker, connecting by parts


async def test_worker_delivers_connecting_by_parts_with_a_password_file(
    stack: Stack, roles: Any, admin: asyncpg.Connection
) -> None:
    role = await roles("w")
    await admin.execute(f'GRANT USAGE, CREATE ON SCHEMA public TO "{role.name}"')
    password_file = stack.workdir / "tsdb-password"
    password_file.write_text(role.password + "\n")
    host, port, database = dsn_parts(stack.dsn)
    env = stack.env(
        TSDB_HOST=host,
        TSDB_PORT=str(port),
        TSDB_DATABASE=database,
        TSDB_USER=role.name,
        TSDB_PASSWORD_FILE=str(password_file),
        TSDB_SSLMODE="disable",
        PIPELINE_DATA_DIR=str(stack.workdir / "worker" / "data"),
    )
    del env["TSDB_DSN"]
    applied = run_cli("topics", "apply", env=env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    shown = run_cli("config", "show", env=env)
    assert role.password not in shown.stdout + shown.stderr

    unique, duplicates = 600, 200
    stream = make_stream(unique, duplicates, stack.partitions, seed=5)
    await produce(stack.bootstrap, stack.ingest_topic, stream.messages)
    worker = WorkerProcess(env, stack.workdir / "worker", name="worker").start()
    stack.workers.append(worker)

    async def progress() -> tuple[int, int | None]:
        rows = await count_rows(stack.dsn, stack.table)
        return rows, await group_lag(stack.bootstrap, f"{stack.app_id}.deliver.tsdb", stack.sink_topic())

    try:
        await poll(progress, lambda v: v == (unique, 0), timeout=180, interval=0.5, what="all events delivered")
    except AssertionError:
        print(worker.tail(60))
        raise
    rows = await fetch(stack.dsn, f"SELECT (payload->>'n')::int AS n FROM \"{stack.table}\"")
    assert sorted(r["n"] for r in rows) == list(range(unique))
    owner = await fetch(stack.dsn, "SELECT tableowner FROM pg_tables WHERE tablename = $1", stack.table)
    assert owner[0]["tableowner"] == role.name
    opened = worker.logged("sink opened")
    assert opened and opened[0]["kind"] == "plain table", worker.tail()
    worker.stop()
    assert role.password not in worker.log_path.read_text(errors="replace")
