"""The naive Faust agent: what a typical user writes first. One `INSERT ... ON CONFLICT DO NOTHING` per
event over one asyncpg connection, Faust's JSON codec, hashlib for the content hash, Faust's default
at-least-once acking. Run as its own process by the harness (settings from the environment):

    BENCH_BOOTSTRAP=... BENCH_TOPIC=... BENCH_APP_ID=... BENCH_DSN=... BENCH_TABLE=... BENCH_DATA_DIR=... \
        python -m bench.naive_faust
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime
from typing import Any

import asyncpg
import faust

from pipeline.sinks.postgres.sink import quote_ident


def build() -> faust.App:
    env = os.environ
    app = faust.App(
        env["BENCH_APP_ID"],
        broker=f"kafka://{env['BENCH_BOOTSTRAP']}",
        datadir=env["BENCH_DATA_DIR"],
        autodiscover=False,
        consumer_auto_offset_reset="earliest",
        topic_disable_leader=True,
        web_enabled=False,
    )
    topic = app.topic(env["BENCH_TOPIC"], value_serializer="json")
    table = quote_ident(env["BENCH_TABLE"])
    insert = (
        f"INSERT INTO {table} (time, event_hash, event_id, source, type, labels, payload) "
        "VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb) ON CONFLICT (event_hash) DO NOTHING"
    )
    state: dict[str, Any] = {}

    @app.agent(topic)
    async def store(events: Any) -> None:
        if "conn" not in state:
            state["conn"] = await asyncpg.connect(env["BENCH_DSN"])
        conn = state["conn"]
        async for event in events:
            canonical = json.dumps(event, sort_keys=True, separators=(",", ":"))
            await conn.execute(
                insert,
                datetime.fromisoformat(event["timestamp"]),
                hashlib.sha256(canonical.encode()).hexdigest(),
                event.get("id"),
                event["source"],
                event["type"],
                json.dumps(event.get("labels", {})),
                json.dumps(event.get("payload")),
            )

    return app


def main() -> None:
    app = build()
    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
