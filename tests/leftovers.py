"""What the integration tests leave behind on a broker and a database they do not own.

Every test names its topics, consumer groups, tables, schemas and roles after a unique id (`new_uid`). On
the session's own broker and server nothing needs removing (they go with the session); on an external one
(``KAFKA_BOOTSTRAP_SERVERS``, ``POSTGRES_DSN``, e.g. a developer's devstack or a shared cluster) every run
left its topics and tables behind (a devstack held about 1,200 topics and 100 tables from earlier runs), so
when the session ends `remove_topics` deletes every topic, and `remove_relations` drops every schema, table
and role, whose name holds one of the session's ids, and nothing else. Consumer groups stay: aiokafka has
no call to delete them, and the broker expires an empty group's offsets after ``offsets.retention.minutes``
(7 days by default).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient

from pipeline.sinks.postgres.sink import quote_ident

_SESSION_UIDS: set[str] = set()


def new_uid() -> str:
    """A short unique id for one test's names (topic prefix, app id, table), remembered for the removal."""
    uid = uuid.uuid4().hex[:10]
    _SESSION_UIDS.add(uid)
    return uid


def session_uids() -> frozenset[str]:
    return frozenset(_SESSION_UIDS)


def _pattern(uids: Collection[str]) -> re.Pattern[str]:
    return re.compile("|".join(re.escape(uid) for uid in sorted(uids)))


def owned(names: Collection[str], uids: Collection[str]) -> list[str]:
    """The `names` that hold one of `uids`, sorted."""
    if not uids:
        return []
    pattern = _pattern(uids)
    return sorted(name for name in names if pattern.search(name))


async def remove_topics(bootstrap: str, uids: Collection[str]) -> list[str]:
    """Delete the topics named after `uids`; return their names."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="tests-leftovers")
    await admin.start()
    try:
        topics = owned(await admin.list_topics(), uids)
        for start in range(0, len(topics), 100):  # one request per hundred, well under any request limit
            await admin.delete_topics(topics[start : start + 100])
        return topics
    finally:
        await admin.close()


async def remove_relations(dsn: str, uids: Collection[str]) -> list[str]:
    """Drop the schemas (with what they hold), the tables outside them and the roles named after `uids`;
    return what was dropped, as ``schema``, ``schema.table`` or ``role:name``."""
    if not uids:
        return []
    pattern = _pattern(uids).pattern
    conn = await asyncpg.connect(dsn)
    try:
        schemas = [
            r["nspname"]
            for r in await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname ~ $1 ORDER BY 1", pattern)
        ]
        tables = await conn.fetch(
            "SELECT schemaname, tablename FROM pg_tables WHERE tablename ~ $1 AND NOT schemaname = ANY($2::text[]) "
            "AND schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2",
            pattern,
            schemas,
        )
        roles = [r["rolname"] for r in await conn.fetch("SELECT rolname FROM pg_roles WHERE rolname ~ $1", pattern)]
        for schema in schemas:
            await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
        for row in tables:
            await conn.execute(
                f"DROP TABLE IF EXISTS {quote_ident(row['schemaname'])}.{quote_ident(row['tablename'])} CASCADE"
            )
        for role in roles:
            await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
            await conn.execute(f"DROP OWNED BY {quote_ident(role)} CASCADE")
            await conn.execute(f"DROP ROLE IF EXISTS {quote_ident(role)}")
        return schemas + [f"{r['schemaname']}.{r['tablename']}" for r in tables] + [f"role:{r}" for r in roles]
    finally:
        await conn.close()
