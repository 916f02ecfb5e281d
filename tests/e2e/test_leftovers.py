"""The session's leftovers on an external broker and database: what holds one of its ids goes, nothing else."""

from __future__ import annotations

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.leftovers import new_uid, owned, remove_relations, remove_topics, session_uids


def test_owned_names_hold_an_id() -> None:
    names = ["tab12.events.ingest", "tab12-dedupe-changelog", "fw-ab12.sink", "other.topic", "tAB12"]
    assert owned(names, {"ab12"}) == ["fw-ab12.sink", "tab12-dedupe-changelog", "tab12.events.ingest"]
    assert owned(names, set()) == []
    assert new_uid() in session_uids()


async def test_only_the_sessions_topics_are_deleted(kafka_bootstrap: str) -> None:
    mine, theirs = new_uid(), new_uid()
    names = [f"t{mine}.events.ingest", f"t{mine}-dedupe-changelog", f"t{theirs}.events.ingest"]
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, num_partitions=1, replication_factor=1) for n in names])
        assert await remove_topics(kafka_bootstrap, {mine}) == sorted(names[:2])
        left = set(await admin.list_topics())
        assert names[2] in left and not left & set(names[:2])
    finally:
        await remove_topics(kafka_bootstrap, {theirs})
        await admin.close()


async def test_only_the_sessions_schemas_tables_and_roles_are_dropped(postgres_dsn: str) -> None:
    mine, theirs = new_uid(), new_uid()
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(f'CREATE ROLE "r{mine}"')
        await conn.execute(f'CREATE SCHEMA "s{mine}" AUTHORIZATION "r{mine}"')
        await conn.execute(f'CREATE TABLE "s{mine}".events (id int)')
        await conn.execute(f'CREATE TABLE "events_{mine}" (id int)')
        await conn.execute(f'CREATE TABLE "events_{theirs}" (id int)')
        dropped = await remove_relations(postgres_dsn, {mine})
        assert dropped == [f"s{mine}", f"public.events_{mine}", f"role:r{mine}"]
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables")}
        assert f"events_{theirs}" in tables and f"events_{mine}" not in tables
        assert await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", f"s{mine}") == 0
        assert await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", f"r{mine}") == 0
    finally:
        await remove_relations(postgres_dsn, {theirs})
        await conn.close()
