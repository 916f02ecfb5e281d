"""What the database and the broker say about a drain: rows so far, the rows-over-time curve from the
rows' own insert times, latencies, topic record counts, and the worker's re-reads from its JSON log."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient

from pipeline.observability.lag import group_lag, topic_ends
from pipeline.sinks.postgres.sink import quote_ident

# The commit watchdog's log events that read a partition again (agents/watchdog.py).
ASSIGNED_EVENT = "partitions assigned"
REREAD_MARK = "reading the partition again"
POLL_SEC = 0.25


class Table:
    """One lane's table over one connection."""

    def __init__(self, conn: asyncpg.Connection, table: str) -> None:
        self.conn = conn
        self.name = quote_ident(table)

    @classmethod
    async def open(cls, dsn: str, table: str) -> Table:
        return cls(await asyncpg.connect(dsn), table)

    async def close(self) -> None:
        await self.conn.close()

    async def rows(self) -> int:
        return int(await self.conn.fetchval(f"SELECT count(*) FROM {self.name}"))

    async def clear(self) -> None:
        await self.conn.execute(f"TRUNCATE {self.name}")

    async def any_row(self) -> bool:
        return bool(await self.conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {self.name})"))

    async def span(self) -> tuple[float, float] | None:
        """(first, last) insert time of the table's rows, epoch seconds (None when empty)."""
        row = await self.conn.fetchrow(
            "SELECT extract(epoch FROM min(ingested_at))::float8 AS a, "
            f"extract(epoch FROM max(ingested_at))::float8 AS b FROM {self.name}"
        )
        if row is None or row["a"] is None:
            return None
        return float(row["a"]), float(row["b"])

    async def timeline(self, since: float, step: float = 0.5) -> list[tuple[float, int]]:
        """Cumulative rows at every `step` seconds after `since` (epoch seconds), up to the last row."""
        records = await self.conn.fetch(
            f"SELECT floor((extract(epoch FROM ingested_at)::float8 - $1) / $2)::int AS slot, count(*) AS n "
            f"FROM {self.name} GROUP BY 1 ORDER BY 1",
            since,
            step,
        )
        points: list[tuple[float, int]] = []
        total = 0
        if records:
            points.append((round(int(records[0]["slot"]) * step, 3), 0))
        for r in records:
            total += int(r["n"])
            points.append((round((int(r["slot"]) + 1) * step, 3), total))
        return points

    async def latencies(self) -> list[tuple[float, float]]:
        """(publish time, seconds from it to the row's insert time) of each row with a publish time
        (payload.sent_at_ms), in seconds."""
        records = await self.conn.fetch(
            f"SELECT (payload->>'sent_at_ms')::float8 / 1000 AS sent, "
            f"extract(epoch FROM ingested_at)::float8 - (payload->>'sent_at_ms')::float8 / 1000 AS s "
            f"FROM {self.name} WHERE payload ? 'sent_at_ms'"
        )
        return [(float(r["sent"]), float(r["s"])) for r in records]

    async def hashes_present(self, hashes: list[str]) -> int:
        return int(await self.conn.fetchval(f"SELECT count(*) FROM {self.name} WHERE event_hash = ANY($1)", hashes))


async def wait_rows(
    table: Table, want: int, *, deadline: float, alive: Callable[[], str | None] | None = None, interval: float = 0.5
) -> tuple[int, float]:
    """Poll until the table holds `want` rows; return (rows, when). Raises TimeoutError at `deadline`
    (monotonic) and RuntimeError when `alive()` reports the process gone."""
    while True:
        rows = await table.rows()
        if rows >= want:
            return rows, time.time()
        problem = alive() if alive is not None else None
        if problem:
            raise RuntimeError(problem)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{rows:,} of {want:,} rows when the stage's time ran out")
        await asyncio.sleep(interval)


async def records(bootstrap: str, topic: str) -> int:
    """Records written to a fresh topic (the sum of its end offsets)."""
    return sum((await topic_ends(bootstrap, topic)).values())


async def commits_settled(bootstrap: str, group: str, topics: list[str], timeout: float) -> bool:
    """Wait until the group has committed every topic up to its end (False after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        lags = [await group_lag(bootstrap, group, t) for t in topics]
        if all(lag == 0 for lag in lags):
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(1.0)


def rereads(log_path: Path) -> int:
    """Re-reads the commit watchdog logged (JSON log lines whose event says it reads a partition again)."""
    return logged(log_path, REREAD_MARK)


async def wait_groups_stable(
    bootstrap: str, groups: Sequence[str], members: int, deadline: float, alive: Callable[[], None]
) -> None:
    """Until every consumer group in `groups` is Stable with `members` members, each holding an assignment;
    `alive` raises when a process of the group died."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        while True:
            alive()
            states = {}
            for group in groups:  # one group per request: aiokafka 0.14 mis-decodes a response with several
                for response in await admin.describe_consumer_groups([group]):
                    for g in response.to_object()["groups"]:
                        assigned = sum(1 for m in g["members"] if m.get("member_assignment"))
                        states[g["group"]] = (g["state"], assigned)
            if all(states.get(g) == ("Stable", members) for g in groups):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"consumer groups not stable with {members} members: {states}")
            await asyncio.sleep(POLL_SEC)
    finally:
        await admin.close()


def assignments(log_path: Path) -> int:
    """Assignments of the app's own consumer group a worker logged (its first one, then one per rebalance)."""
    return logged(log_path, ASSIGNED_EVENT, exact=True)


def logged(log_path: Path, mark: str, *, exact: bool = False) -> int:
    """JSON log lines whose event contains `mark` (or is `mark`, with `exact`)."""
    count = 0
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return 0
    for line in text.splitlines():
        if mark not in line:
            continue
        try:
            event = str(json.loads(line).get("event", ""))
        except ValueError:
            event = line
        count += event == mark if exact else mark in event
    return count
