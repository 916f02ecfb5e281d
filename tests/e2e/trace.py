"""When an e2e test times out short of rows: find each missing event along the flow (ingest, by-hash, sink
topic, retry tiers, DLQ) and show each consumer group's committed offsets next to the partition ends, so a
failure report says where the events stopped, not only that they did."""

from __future__ import annotations

import json
from collections import defaultdict

from pipeline.observability.lag import group_offsets, topic_ends
from tests.e2e.conftest import Stack
from tests.support import Record, fetch, read_topic


def _n(record: Record) -> int | None:
    try:
        payload = json.loads(record.value or b"{}").get("payload")
    except ValueError:
        return None
    n = payload.get("n") if isinstance(payload, dict) else None
    return n if isinstance(n, int) else None


async def where_are_they(stack: Stack, topics: list[str], sink: str = "tsdb") -> str:
    """A report: for every event published to ingest but neither in the table nor in the sink's DLQ,
    where (topic, partition, offset) it is seen, and each group's commit against each partition end."""
    rows = await fetch(stack.dsn, f"SELECT (payload->>'n')::int AS n FROM \"{stack.table}\"")
    landed = {r["n"] for r in rows}
    seen: dict[str, dict[int, list[tuple[int, int]]]] = {}
    for topic in topics:
        found: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for record in await read_topic(stack.bootstrap, topic):
            n = _n(record)
            if n is not None:
                found[n].append((record.partition, record.offset))
        seen[topic] = found
    published = set(seen.get(stack.ingest_topic, {}))
    dead = set(seen.get(f"{stack.sink_topic(sink)}.dlq", {}))
    missing = sorted(published - landed - dead)
    lines = [f"published {len(published)}, landed {len(landed)}, dead {len(dead)}, missing {len(missing)}"]
    for n in missing[:20]:
        places = [f"{t.removeprefix(stack.prefix)}@{seen[t][n]}" for t in topics if n in seen[t]]
        lines.append(f"  n={n}: " + "; ".join(places))
    for group in (stack.app_id, f"{stack.app_id}.deliver.{sink}"):
        committed = await group_offsets(stack.bootstrap, group)
        for topic in sorted({tp.topic for tp in committed}):
            ends = await topic_ends(stack.bootstrap, topic)
            parts = [
                f"p{tp.partition}={off}/{ends.get(tp.partition)}"
                for tp, off in sorted(committed.items(), key=lambda kv: kv[0].partition)
                if tp.topic == topic
            ]
            lines.append(f"  group {group.removeprefix(stack.app_id) or '<app>'} on {topic}: {' '.join(parts)}")
    return "\n".join(lines)
