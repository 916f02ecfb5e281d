"""`pipeline dlq` on records written straight into a DLQ (no worker): filters select exactly what they
should, --dry-run changes nothing, the replay cap parks, skipped events stay pending, export, purge and
import give back the same events and headers, and bad arguments get their exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from pipeline import headers as h
from pipeline.config import load_settings
from pipeline.dlq import access
from pipeline.dlq.access import replay_group
from pipeline.dlq.errors import BadTime, NotConfirmed, NothingMatched, UnknownSink
from pipeline.dlq.filters import Filter
from pipeline.dlq.inspect import inspect as inspect_dlq
from pipeline.dlq.replay import ReplayRequest
from pipeline.dlq.replay import replay as replay_dlq
from pipeline.dlq.stats import dlq_stats
from pipeline.dlq.timeparse import from_ms, parse_time
from pipeline.observability.lag import group_offsets
from pipeline.topics import load_topics
from tests.e2e.conftest import Stack
from tests.support import read_topic, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

T0 = 1_795_000_000_000  # epoch ms of the first record; each next one is a minute later


def iso(ms: int) -> str:
    return from_ms(ms)


def letters() -> list[tuple[bytes, bytes, list[tuple[str, bytes]], int]]:
    """12 dead letters: classes A/B by parity, reasons fatal/retries_exhausted by thirds, two of class A
    already replayed twice (the cap in these tests)."""
    out = []
    for n in range(12):
        headers = [
            (h.ERROR_CLASS, b"ClassA" if n % 2 == 0 else b"ClassB"),
            (h.ERROR_REASON, b"fatal" if n % 3 else b"retries_exhausted"),
            (h.EVENT_HASH, f"hash-{n}".encode()),
            ("bin", bytes([0x80, n])),
            ("dup", b"1"),
            ("dup", b"2"),
        ]
        if n in (0, 4):
            headers.append((h.REPLAY_COUNT, b"2"))
        out.append(
            (f"hash-{n}".encode(), b'{"n": %d}' % n if n != 5 else b"\xff\xfe not utf-8", headers, T0 + n * 60_000)
        )
    return out


async def write(bootstrap: str, topic: str, records: list[tuple[bytes, bytes, list[tuple[str, bytes]], int]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value, headers, ts in records:
            await (await producer.send(topic, key=key, value=value, headers=headers, timestamp_ms=ts, partition=0))
    finally:
        await producer.stop()


def cli(stack: Stack, *args: str) -> Any:
    return run_cli("dlq", *args, env=stack.env(DLQ_REPLAY_MAX="2"))


def keys_of(output: str) -> list[str]:
    return [json.loads(line)["key"] for line in output.splitlines() if line.startswith("{")]


def comparable(line: str) -> dict[str, Any]:
    body = json.loads(line)
    return {k: v for k, v in body.items() if k not in ("offset", "topic")}


async def test_filters_dry_run_cap_export_purge_import_and_exit_codes(stack: Stack, tmp_path: Path) -> None:
    assert run_cli("topics", "apply", env=stack.env()).returncode == 0
    dlq = f"{stack.prefix}sink.tsdb.dlq"
    await write(stack.bootstrap, dlq, letters())

    # Filters select exactly what they should (the library in-process, as the admin API calls it; the
    # command once).
    settings = load_settings(environ=stack.env(DLQ_REPLAY_MAX="2"))
    catalog = load_topics(settings.topics_path(), settings.topic_vars())

    async def inspect(**filters: Any) -> list[str]:
        found = await inspect_dlq(settings, catalog, "tsdb", Filter(**filters))
        return [r.key_text or "" for r in found]

    assert await inspect() == [f"hash-{n}" for n in range(12)]
    assert await inspect(error_class="ClassB") == [f"hash-{n}" for n in range(1, 12, 2)]
    assert await inspect(reason="retries_exhausted") == ["hash-0", "hash-3", "hash-6", "hash-9"]
    assert await inspect(error_class="ClassA", reason="fatal") == ["hash-2", "hash-4", "hash-8", "hash-10"]
    assert await inspect(key="hash-7") == ["hash-7"]
    window = {"since": parse_time(iso(T0 + 3 * 60_000)), "until": parse_time(iso(T0 + 5 * 60_000))}
    assert await inspect(**window) == ["hash-3", "hash-4"]
    shown = cli(stack, "inspect", "--sink", "tsdb", "--json", "--limit", "3", "--since", iso(T0 + 60_000))
    assert keys_of(shown.stdout) == ["hash-1", "hash-2", "hash-3"], shown.stderr

    # Bad arguments: distinct exit codes, a clear line, nothing changed.
    unknown = cli(stack, "inspect", "--sink", "nope")
    assert unknown.returncode == UnknownSink.exit_code and "unknown sink 'nope'" in unknown.stderr
    bad_time = cli(stack, "replay", "--sink", "tsdb", "--since", "yesterday", "--yes")
    assert bad_time.returncode == BadTime.exit_code and "RFC 3339" in bad_time.stderr
    nothing = cli(stack, "replay", "--sink", "tsdb", "--key", "absent", "--yes")
    assert nothing.returncode == NothingMatched.exit_code and "no pending event" in nothing.stderr
    no_tty = cli(stack, "replay", "--sink", "tsdb")
    assert no_tty.returncode == NotConfirmed.exit_code and "--yes" in no_tty.stderr
    assert cli(stack, "purge", "--sink", "tsdb").returncode == 2
    assert cli(stack, "replay", "--sink", "tsdb", "--to", "elsewhere", "--yes").returncode == 2

    # --dry-run lists what would happen and changes nothing.
    dry = cli(stack, "replay", "--sink", "tsdb", "--error-class", "ClassA", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert keys_of(dry.stdout) == [f"hash-{n}" for n in range(0, 12, 2)]
    planned = json.loads(dry.stderr.splitlines()[-1])
    assert planned["parked_reason"] and planned["resent"] == planned["parked"] == 0
    assert await group_offsets(stack.bootstrap, replay_group(stack.app_id, "tsdb")) == {}
    assert await read_topic(stack.bootstrap, stack.sink_topic()) == []
    assert len(await read_topic(stack.bootstrap, dlq)) == 12

    # A filtered replay: ClassA re-sent, except the two at the cap, which are parked; ClassB stays pending.
    done = cli(stack, "replay", "--sink", "tsdb", "--error-class", "ClassA", "--yes", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    assert (summary["matched"], summary["resent"], summary["parked"], summary["failed"]) == (6, 4, 2, 0)
    assert "DLQ_REPLAY_MAX=2" in summary["parked_reason"]
    sent = await read_topic(stack.bootstrap, stack.sink_topic(), committed_only=True)
    assert sorted(r.key or b"" for r in sent) == [b"hash-10", b"hash-2", b"hash-6", b"hash-8"]
    assert {r.headers[h.REPLAY_COUNT] for r in sent} == {b"1"}
    assert all(h.ERROR_CLASS not in r.headers and r.headers["bin"] for r in sent)
    parked = await read_topic(stack.bootstrap, f"{stack.prefix}sink.tsdb.parked", committed_only=True)
    assert sorted(r.key or b"" for r in parked) == [b"hash-0", b"hash-4"]
    assert all(b"DLQ_REPLAY_MAX=2" in r.headers[h.PARKED_REASON] for r in parked)
    # Still pending: hash-11 (after the last match, untouched) and the skipped ones, copied past the offset.
    assert await inspect() == ["hash-11", "hash-1", "hash-3", "hash-5", "hash-7", "hash-9"]
    with pytest.raises(NothingMatched):
        await replay_dlq(settings, catalog, ReplayRequest("tsdb", Filter(error_class="ClassA")))
    stats = [s.as_dict() for s in await dlq_stats(settings, catalog)]
    tsdb = next(s for s in stats if s["sink"] == "tsdb")
    assert tsdb["pending"] == 6 and tsdb["replayed"] == 11 and tsdb["by_class"] == {"ClassB": 6}
    assert tsdb["by_reason"] == {"fatal": 4, "retries_exhausted": 2}
    assert next(s for s in stats if s["sink"] == "ingest")["pending"] == 0

    # --to retry: the first retry tier, released at once (no due time), with a fresh retry budget.
    to_retry = await replay_dlq(settings, catalog, ReplayRequest("tsdb", Filter(key="hash-11"), to="retry"))
    assert (to_retry.resent, to_retry.destination) == (1, catalog.sink_retry("tsdb")[0].name)
    tier = await read_topic(stack.bootstrap, to_retry.destination, committed_only=True)
    assert [r.key for r in tier] == [b"hash-11"] and h.DUE_MS not in tier[0].headers
    assert tier[0].headers[h.REPLAY_COUNT] == b"1"

    # export, purge --all, import: the same events and headers.
    out = tmp_path / "dlq.jsonl"
    exported = cli(stack, "export", "--sink", "tsdb", "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    before = [comparable(line) for line in out.read_text().splitlines()]
    assert len(before) == 5 and before[2]["key"] == "hash-5" and before[2]["value_encoding"] == "base64"
    purged = cli(stack, "purge", "--sink", "tsdb", "--all", "--yes")
    assert purged.returncode == 0 and "removed" in purged.stdout, purged.stderr
    assert await read_topic(stack.bootstrap, dlq) == []
    with pytest.raises(NothingMatched):
        await inspect()
    imported = cli(stack, "import", "--sink", "tsdb", str(out))
    assert imported.returncode == 0 and "imported 5" in imported.stdout, imported.stderr
    again = cli(stack, "export", "--sink", "tsdb", "--out", "-")
    assert [comparable(line) for line in again.stdout.splitlines()] == before
    assert [(k, v) for k, v in (await raw_headers(stack, dlq))[0] if k == "dup"] == [("dup", b"1"), ("dup", b"2")]


async def raw_headers(stack: Stack, topic: str) -> list[list[tuple[str, bytes]]]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        batch = await consumer.getmany(tp, timeout_ms=5000)
        return [list(r.headers) for r in batch.get(tp, [])]
    finally:
        await consumer.stop()


async def test_the_ingest_dlq_purges_a_prefix_and_replays_to_the_ingest_topic(stack: Stack) -> None:
    assert run_cli("topics", "apply", env=stack.env()).returncode == 0
    await write(stack.bootstrap, f"{stack.ingest_topic}.dlq", letters()[:5])
    purged = cli(stack, "purge", "--sink", "ingest", "--before", iso(T0 + 3 * 60_000), "--yes")
    assert purged.returncode == 0, purged.stderr
    assert "removed 3 events" in purged.stdout and "offsets 0..2" in purged.stdout
    left = await read_topic(stack.bootstrap, f"{stack.ingest_topic}.dlq")
    assert [r.key for r in left] == [b"hash-3", b"hash-4"]

    # Replayed to the ingest topic with the producer's headers only (the ingest agent adds its own again);
    # hash-4, replayed twice already, is parked.
    settings = load_settings(environ=stack.env(DLQ_REPLAY_MAX="2"))
    catalog = load_topics(settings.topics_path(), settings.topic_vars())
    summary = await replay_dlq(settings, catalog, ReplayRequest("ingest"))
    assert (summary.resent, summary.parked, summary.destination) == (1, 1, stack.ingest_topic)
    sent = await read_topic(stack.bootstrap, stack.ingest_topic, committed_only=True)
    assert [r.key for r in sent] == [b"hash-3"]
    assert sorted(sent[0].headers) == ["bin", "dup", h.REPLAY_COUNT]
    parked = await read_topic(stack.bootstrap, f"{stack.ingest_topic}.parked", committed_only=True)
    assert [r.key for r in parked] == [b"hash-4"]


async def test_the_offsets_a_replay_transaction_commits_are_seen_straight_after_it(stack: Stack) -> None:
    """A replay's DLQ offsets become visible only after its transaction's markers are written: read plain
    (aiokafka's committed()), the offset straight after commit_transaction was the old one in most of 100
    tries, so a replay run at once after another planned the event just re-sent. Here a transaction of the
    replay group's transactional id moves the offset one by one, and the spans every DLQ tool starts from
    are read at once after each commit; then a replay and its repeat, back to back."""
    assert run_cli("topics", "apply", env=stack.env()).returncode == 0
    records = [r for r in letters() if h.REPLAY_COUNT not in dict(r[2])]  # none would be parked
    dlq = f"{stack.prefix}sink.tsdb.dlq"
    await write(stack.bootstrap, dlq, records)
    settings = load_settings(environ=stack.env(DLQ_REPLAY_MAX="2"))
    catalog = load_topics(settings.topics_path(), settings.topic_vars())
    group = replay_group(settings.app_id, "tsdb")
    tp = TopicPartition(dlq, 0)
    producer = await access.start(access.producer(settings.kafka, catalog, transactional_id=group))
    client = await access.start(access.consumer(settings.kafka, group))
    try:
        for moved in range(1, len(records) // 2 + 1):
            await producer.begin_transaction()
            await producer.send_offsets_to_transaction({tp: moved}, group)
            await producer.commit_transaction()
            (span,) = await access.spans(client, dlq, group)
            assert (span.committed, span.replayed) == (moved, moved)
    finally:
        await client.stop()
        await producer.stop()
    left = len(records) - len(records) // 2
    (tsdb,) = [s for s in await dlq_stats(settings, catalog) if s.name == "tsdb"]
    assert tsdb.pending == left
    one = Filter(partition=0, offset=len(records) // 2)
    assert (await replay_dlq(settings, catalog, ReplayRequest("tsdb", one, limit=1))).resent == 1
    with pytest.raises(NothingMatched):
        await replay_dlq(settings, catalog, ReplayRequest("tsdb", one, limit=1))
    sent = await read_topic(stack.bootstrap, stack.sink_topic(), committed_only=True)
    assert [r.key for r in sent] == [records[len(records) // 2][0]]
