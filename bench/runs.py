"""The benchmark's parts, each bounded by a timeout: drains (pipeline, bare loop, naive Faust, pipeline with
breakers and retry tiers off), latency at a fixed offered rate, RSS with a full dedupe table, and a profile."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench import profile as profiling
from bench.disk_probe import SyncProbe
from bench.events import Backlog, LiveMix, Message, Scripted, compact, event, make_backlog, script
from bench.hops import hop_percentiles
from bench.measure import Table, assignments, commits_settled, records, rereads, wait_groups_stable, wait_rows
from bench.procs import Child, Steal
from bench.report import (
    BARE,
    NO_RELIABILITY,
    PIPELINE,
    Drain,
    Latency,
    Rss1M,
    Scaleout,
    drained,
    per_second,
    window_start,
)
from bench.stack import REPO, Lane, Stack, child_env, create_table, create_topic, pipeline_topics, produce, python
from pipeline.config import load_settings
from pipeline.devstack.kafka import free_port
from pipeline.events import parse_event
from pipeline.limits import ingest_message_bytes
from pipeline.produce import BatchProducer, Record, partition_for
from pipeline.topics import TopicCatalog
from tests.faults import FaultProxy, through

# The reliability machinery switched off: no breaker, no retry tiers (max_retries 0: failures go to the DLQ).
NO_RELIABILITY_ENV = {"TSDB_BREAKER_ENABLED": "false", "TSDB_MAX_RETRIES": "0"}
SETTLE_SEC = 45.0  # the agents' commits reach the topics' ends (the watchdog re-reads after 15 s)
POLL_SEC = 0.25
FIRST_ROW_POLL_SEC = 0.05
LATENCY_PRIMER = 100
OFFER_TICK_MS = 5  # the latency run's load generator hands over what is due every 5 ms
SINK = "tsdb"  # the one sink a bench worker enables (TSDB_ENABLED in bench.stack.Lane.worker_env)


@dataclass
class Run:
    stack: Stack
    workdir: Path
    events: int = 200_000
    duplicate_share: float = 0.3
    partitions: int = 6
    stage_timeout: float | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    worker_env: dict[str, str] = field(default_factory=dict)  # --worker-env: for every pipeline worker

    def lane(self, name: str) -> Lane:
        return Lane(self.run_id, name, self.partitions, self.workdir, self.worker_env)

    def timeout(self, events: int) -> float:
        """A stage's budget: room for start-up and a drain down to about 300 events/s."""
        return self.stage_timeout or 180.0 + events / 300


# --------------------------------------------------------------------------------------------------
# Contenders: a process that drains a lane's ingest topic into its table


def pipeline_worker(run: Run, lane: Lane, tag: str = "worker", **overrides: str) -> Child:
    """A `pipeline worker` of the lane's app, logging to `<lane dir>/<tag>.log`, its web server on a free port."""
    env = child_env(lane.worker_env(run.stack, **{"WEB_PORT": str(free_port()), **overrides}))
    argv = python("-m", "pipeline.cli.main", "worker")
    return Child(f"{lane.name}/{tag}", argv, env, lane.dir / f"{tag}.log", lane.dir)


def bare_loop(run: Run, lane: Lane) -> Child:
    argv = python(
        "-m", "bench.bare", "--bootstrap", run.stack.bootstrap, "--topic", lane.ingest_topic,
        "--group", lane.app_id, "--dsn", run.stack.dsn, "--table", lane.table,
    )  # fmt: skip
    return Child(lane.name, argv, child_env({}), lane.dir / "bare.log", lane.dir)


def naive_faust(run: Run, lane: Lane) -> Child:
    env = {
        "BENCH_BOOTSTRAP": run.stack.bootstrap,
        "BENCH_TOPIC": lane.ingest_topic,
        "BENCH_APP_ID": lane.app_id,
        "BENCH_DSN": run.stack.dsn,
        "BENCH_TABLE": lane.table,
        "BENCH_DATA_DIR": str(lane.dir / "data"),
    }
    return Child(lane.name, python("-m", "bench.naive_faust"), child_env(env), lane.dir / "naive.log", lane.dir)


async def prepare(run: Run, lane: Lane, *, pipeline: bool, env: dict[str, str] | None = None) -> TopicCatalog | None:
    """The lane's table and topics; for a pipeline lane, its topic catalog."""
    await create_table(run.stack, lane.table)
    if pipeline:
        return await pipeline_topics(lane, run.stack, env or lane.worker_env(run.stack))
    await create_topic(run.stack, lane.ingest_topic, run.partitions)
    return None


async def observe(children: Child | Sequence[Child], table: Table, result: Drain, want: int, deadline: float) -> None:
    """Start the children (one contender: one process, or the workers of one app) together and follow the
    table until it holds `want` rows: start-up, drain time, the drain's CPU seconds (summed), peak RSS (the
    largest) and the rows-over-time curve go into `result`."""
    group = [children] if isinstance(children, Child) else list(children)
    for child in group:
        if child.proc is None:  # a group that joined first is running already
            child.start()
    started = min(child.started for child in group)
    while not await table.any_row():
        _alive(group)
        if time.monotonic() > deadline:
            raise TimeoutError("no row when the stage's time ran out")
        await asyncio.sleep(FIRST_ROW_POLL_SEC)
    cpu_first, steal = _cpu(group), Steal()
    while True:
        rows = await table.rows()
        cpu = _cpu(group)
        if rows >= want:
            break
        _alive(group)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{rows:,} of {want:,} rows when the stage's time ran out")
        await asyncio.sleep(POLL_SEC)
    peaks = [memory[1] for child in group if (memory := child.memory_mb())]
    result.peak_rss_mb = max(peaks) if peaks else None
    if cpu is not None and cpu_first is not None:
        result.cpu_s = cpu - cpu_first
    result.cpu_total_s = cpu
    result.steal_cores = steal.cores()
    span = await table.span()
    assert span is not None
    result.startup_s = span[0] - started
    result.drain_s = span[1] - span[0]
    result.timeline = await table.timeline(started)
    result.rows = await table.rows()


def _alive(group: Sequence[Child]) -> None:
    for child in group:
        if (problem := child.exit_problem()) is not None:
            raise RuntimeError(problem)


def _cpu(group: Sequence[Child]) -> float | None:
    seconds = [child.cpu_seconds() for child in group]
    return None if None in seconds else sum(s for s in seconds if s is not None)


async def drain(
    run: Run, name: str, backlog: Backlog, overrides: dict[str, str] | None = None, *, lane: str | None = None
) -> Drain:
    """Pre-fill the lane's ingest topic with the backlog, then let one contender drain it (on a lane named
    after it, or `lane` for a repeat)."""
    where = run.lane(lane or name)
    is_pipeline = name in (PIPELINE, NO_RELIABILITY)
    result = Drain(contender=name, events=backlog.events, unique=backlog.unique)
    env = where.worker_env(run.stack, **(overrides or {}))
    if is_pipeline:
        child = pipeline_worker(run, where, **(overrides or {}))
    elif name == BARE:
        child = bare_loop(run, where)
    else:
        child = naive_faust(run, where)
    return await drain_lane(run, where, backlog, result, [child], pipeline=is_pipeline, env=env)


async def drain_lane(
    run: Run,
    lane: Lane,
    backlog: Backlog,
    result: Drain,
    group: list[Child],
    *,
    pipeline: bool,
    env: dict[str, str],
    join_first: Sequence[str] = (),
) -> Drain:
    """Prepare the lane, pre-fill its ingest topic with the backlog, start the group (one contender's
    processes) together and time the drain into `result`; for the pipeline, then the work redone.

    With `join_first` (consumer groups), the processes start on the empty lane and the backlog is produced
    once each of those groups is stable with every process in it: the drain then measures the group's
    steady state, not the rebalances of its forming (their time goes into `startup_s`)."""
    table: Table | None = None
    try:
        async with asyncio.timeout(run.timeout(backlog.events)):
            deadline = time.monotonic() + run.timeout(backlog.events)
            await prepare(run, lane, pipeline=pipeline, env=env)
            table = await Table.open(run.stack.dsn, lane.table)
            joined_s = None
            if join_first:
                for child in group:
                    child.start()
                await wait_groups_stable(run.stack.bootstrap, join_first, len(group), deadline, lambda: _alive(group))
                joined_s = time.time() - min(child.started for child in group)
            await produce(run.stack, lane.ingest_topic, backlog.messages)
            await observe(group, table, result, backlog.unique, deadline)
            if joined_s is not None:
                result.startup_s = joined_s
        if pipeline:
            await pipeline_work(run, lane, env, group, result)
            result.rows = await table.rows()
    except (TimeoutError, RuntimeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        if table is not None:
            result.rows = await table.rows()
    finally:
        for child in group:
            child.stop()
        if table is not None:
            await table.close()
    return result


async def pipeline_work(
    run: Run, lane: Lane, env: dict[str, str], children: Child | Sequence[Child], result: Drain
) -> None:
    """Work redone: records on the by-hash and sink topics once the agents' commits reached the ends, and
    the partitions the commit watchdog read again."""
    settings = load_settings(environ=env)
    from pipeline.topics import load_topics

    catalog = load_topics(settings.topics_path(), settings.topic_vars())
    by_hash, sink = catalog.by_hash.name, catalog.sink(SINK).name
    result.commits_settled = await commits_settled(
        run.stack.bootstrap, lane.app_id, [lane.ingest_topic, by_hash], SETTLE_SEC
    )
    result.by_hash_records = await records(run.stack.bootstrap, by_hash)
    result.sink_records = await records(run.stack.bootstrap, sink)
    group = [children] if isinstance(children, Child) else children
    result.rereads = sum(rereads(child.log_path) for child in group)
    result.assignments = sum(assignments(child.log_path) for child in group)


# --------------------------------------------------------------------------------------------------
# Scale-out: the same backlog drained by 1, 2, 3 ... workers of one app


async def scaleout(
    run: Run,
    backlog: Backlog,
    workers: Sequence[int],
    *,
    sink_rtt_ms: float = 0.0,
) -> Scaleout:
    """For each count in `workers`, a lane of its own (topics, group, table) pre-filled with the backlog, then
    that many `pipeline worker` processes of the lane's app, each with its own data directory, started
    together on the empty lane; the backlog is produced once their groups are stable (`drain_lane`'s
    `join_first`) and timed from the lane's first row to its last unique row as `drain` is. With `sink_rtt_ms`, the
    workers reach PostgreSQL through a proxy that delays each direction by half of it: a remote database,
    where a worker's writes wait on round trips rather than on cores."""
    result = Scaleout(partitions=run.partitions, sink_rtt_ms=sink_rtt_ms, env=dict(run.worker_env))
    where = f" (sink round trip {sink_rtt_ms:g} ms)" if sink_rtt_ms else ""
    for n in workers:
        print(f"bench: draining {backlog.events:,} events with {n} pipeline worker(s){where} ...", flush=True)
        result.drains[n] = await _scaleout_lane(run, backlog, n, sink_rtt_ms)
        d = result.drains[n]
        drained(f"{n} worker(s)", d)
    return result


async def _scaleout_lane(run: Run, backlog: Backlog, n: int, sink_rtt_ms: float) -> Drain:
    lane = run.lane(f"scaleout-{n}")
    result = Drain(contender=f"{PIPELINE}x{n}", events=backlog.events, unique=backlog.unique)
    proxy = None
    overrides: dict[str, str] = {}
    if sink_rtt_ms:
        proxy = await FaultProxy.before(run.stack.dsn).start()
        proxy.set("slow", delay=sink_rtt_ms / 2000)
        overrides["TSDB_DSN"] = through(run.stack.dsn, proxy)
    try:
        group = [
            pipeline_worker(run, lane, f"worker-{i}", PIPELINE_DATA_DIR=str(lane.dir / f"data-{i}"), **overrides)
            for i in range(n)
        ]
        groups = [lane.app_id, f"{lane.app_id}.deliver.tsdb"]  # the app (ingest, dedupe) and the sink's delivery
        env = lane.worker_env(run.stack)
        return await drain_lane(run, lane, backlog, result, group, pipeline=True, env=env, join_first=groups)
    finally:
        if proxy is not None:
            await proxy.stop()


# --------------------------------------------------------------------------------------------------
# Latency at a fixed offered rate


async def latency(run: Run, rate: float, seconds: float, *, warmup: float = 0.0, name: str = "latency") -> Latency:
    """A running worker, then `rate` events per second for `warmup` + `seconds` in the backlog's mix (the
    share of duplicates the drain's maximum was measured with), the unique ones of the last `seconds`
    carrying their publish time; latency = the row's insert time (database clock) - publish time.

    The warm-up is the first load of a new worker: its heap grows to its working size (about 10,000 page
    faults, measured), and the events of the first 1-2 seconds wait up to a second; the same load after an
    idle spell does not. Latency percentiles are of the steady state, as in the OpenMessaging Benchmark."""
    lane = run.lane(name)
    result = Latency(offered_rate=rate, seconds=seconds, warmup_seconds=warmup)
    total = max(1, round(rate * seconds))
    warm = round(rate * warmup)
    child = pipeline_worker(run, lane)
    table: Table | None = None
    try:
        async with asyncio.timeout(run.timeout(warm + total) + warmup + seconds):
            deadline = time.monotonic() + run.timeout(warm + total) + warmup + seconds
            catalog = await prepare(run, lane, pipeline=True)
            assert catalog is not None
            table = await Table.open(run.stack.dsn, lane.table)
            mix = LiveMix(run.duplicate_share, first=1_000_000)
            messages = script(mix, warm + total, measured_from=warm)
            primer = [Message(n % run.partitions, b"primer", compact(event(n))) for n in range(LATENCY_PRIMER)]
            await produce(run.stack, lane.ingest_topic, primer)
            child.start()
            await wait_rows(table, LATENCY_PRIMER, deadline=deadline, alive=child.exit_problem)
            cpu_before, steal = child.cpu_seconds(), Steal()
            probe = SyncProbe(run.stack.database_dir or lane.dir).start()
            try:
                await offer(run, lane, rate, messages)
                unique, result.unique = mix.unique, mix.stamped
                result.sent, result.duplicate_share = total, run.duplicate_share
                await wait_rows(table, LATENCY_PRIMER + unique, deadline=deadline, alive=child.exit_problem)
            finally:
                syncs = probe.stop()
            cpu_after, result.steal_cores = child.cpu_seconds(), steal.cores()
            if cpu_before is not None and cpu_after is not None:
                result.cpu_s_per_1000 = round((cpu_after - cpu_before) / (warm + total) * 1000, 4)
            samples = await table.latencies()
            result.rows = len(samples)
            result.percentiles_ms = {k: round(v, 1) for k, v in _percentiles([s for _, s in samples]).items()}
            result.seconds_ms = per_second(samples)
            result.disk_sync = asdict(syncs.relative_to(window_start(samples)))
            topics = (catalog.by_hash.name, catalog.sink(SINK).name)
            result.hops_ms = await hop_percentiles(run.stack.bootstrap, run.stack.dsn, lane.table, *topics)
    except (TimeoutError, RuntimeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        child.stop()
        if table is not None:
            await table.close()
    return result


def _percentiles(values: list[float]) -> dict[str, float]:
    from bench.report import latency_percentiles

    return latency_percentiles(values)


async def offer(run: Run, lane: Lane, rate: float, messages: Sequence[Scripted]) -> None:
    """Publish `messages` at `rate` per second: every 5 ms what is due, stamped with the time it is handed to
    the product's batch producer (acks=all, idempotent; a flush at most every 5 ms). Prepared before the run,
    the messages cost the generator a byte join each, so it leaves the shared host's cores to what is measured
    (the product's `Publisher`, one aiokafka send per message, took 0.40-0.54 of a core at 8,000 ev/s)."""
    env = {**lane.worker_env(run.stack), "KAFKA_PRODUCE_FLUSH_INTERVAL_MS": str(OFFER_TICK_MS)}
    settings = load_settings(environ=env)
    max_request = ingest_message_bytes(settings.max_event_bytes)
    stamps = {-1: b""}  # the publish time of each unique event sent (-1: the messages that carry none)
    sends: list[asyncio.Future[object]] = []
    async with BatchProducer(settings.kafka, client_id="bench-load", max_request_size=max_request) as producer:
        start, sent = time.monotonic(), 0
        while sent < len(messages):
            due = min(len(messages), int((time.monotonic() - start) * rate) + 1)
            if due > sent:
                now = b"%d" % round(time.time() * 1000)
                records = []
                for message in messages[sent:due]:
                    if message.new:
                        stamps[message.origin] = now
                    value = message.value(stamps[message.origin])
                    records.append(Record(lane.ingest_topic, message.key, value, []))
                sends.append(asyncio.ensure_future(producer.send(records)))
                sent = due
            if len(sends) > 100:
                await asyncio.gather(*sends)
                sends.clear()
            await asyncio.sleep(OFFER_TICK_MS / 1000)
        await asyncio.gather(*sends)


# --------------------------------------------------------------------------------------------------
# RSS with a full dedupe table


async def rss_with_entries(run: Run, entries: int, events: int) -> Rss1M:
    """A worker whose dedupe table holds `entries` hashes, draining a backlog of `events`.

    Fill (faster than draining `entries` events, and what a worker meets after a restart on a new host): one
    real event goes through a first worker, which writes one table entry to the changelog topic; that record
    is the template for `entries - 1` more (other hashes, same value: first seen now), produced to the
    changelog partition the by-hash topic's key maps to. A second worker with an empty data directory
    restores them all into RocksDB before it processes anything, then drains the backlog. 1,000 of the
    seeded hashes are those of backlog events: they must be dropped as duplicates, which shows that the
    table really holds the seeded entries."""
    lane = run.lane("rss")
    result = Rss1M(entries=entries, fill="changelog restore from a templated changelog")
    backlog = make_backlog(events, run.duplicate_share, run.partitions, seed=11, first=20_000_000)
    seeded_real = [
        parse_event(compact(event(20_000_000 + n)), 1 << 20).event_hash for n in range(min(1000, backlog.unique - 1))
    ]
    env = lane.worker_env(run.stack)
    first: Child | None = None
    second: Child | None = None
    table: Table | None = None
    budget = run.timeout(events) + entries / 2000
    try:
        async with asyncio.timeout(budget):
            deadline = time.monotonic() + budget
            catalog = await pipeline_topics(lane, run.stack, env)
            await create_table(run.stack, lane.table)
            table = await Table.open(run.stack.dsn, lane.table)
            await produce(run.stack, lane.ingest_topic, [Message(0, b"template", compact(event(9_000_000)))])
            first = pipeline_worker(run, lane).start()
            await wait_rows(table, 1, deadline=deadline, alive=first.exit_problem)
            changelog, by_hash = catalog.dedupe_changelog.name, catalog.by_hash.name
            template = await _first_record(run.stack.bootstrap, changelog, deadline)
            hash_record = await _first_record(run.stack.bootstrap, by_hash, deadline)
            await commits_settled(run.stack.bootstrap, lane.app_id, [lane.ingest_topic, by_hash], SETTLE_SEC)
            first.stop()
            await table.clear()  # the drain below is timed from its own first row
            template_hash = (hash_record.key or b"").decode()
            if template_hash.encode() not in (template.key or b""):
                raise RuntimeError(f"the changelog key {template.key!r} does not hold the hash {template_hash}")
            partitions = catalog.by_hash.partitions
            if partition_for(hash_record.key, partitions) != hash_record.partition:
                result.fill += " (by-hash partitioner is not murmur2: seeded entries spread round robin)"
            rng = random.Random(5)
            hashes = seeded_real + [f"{rng.getrandbits(256):064x}" for _ in range(entries - 1 - len(seeded_real))]
            for start in range(0, len(hashes), 100_000):
                chunk = hashes[start : start + 100_000]
                await produce(run.stack, changelog, [_seeded(template, template_hash, h, partitions) for h in chunk])
            await produce(run.stack, lane.ingest_topic, backlog.messages)
            lane_data = lane.dir / "data-restored"
            second = pipeline_worker(run, lane, PIPELINE_DATA_DIR=str(lane_data))
            result.drain = Drain(contender="pipeline-1M-hashes", events=backlog.events, unique=backlog.unique)
            want = backlog.unique - len(seeded_real)
            result.drain.unique = want
            await observe(second, table, result.drain, want, deadline)
            await pipeline_work(run, lane, env, second, result.drain)
            present = await table.hashes_present(seeded_real)
            result.drain.rows = await table.rows()
            result.seeded_duplicates_dropped = present == 0 and result.drain.rows == want
    except (TimeoutError, RuntimeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        for child in (first, second):
            if child is not None:
                child.stop()
        if table is not None:
            await table.close()
    return result


def _seeded(template: _Record, template_hash: str, new_hash: str, partitions: int) -> Message:
    key = (template.key or b"").replace(template_hash.encode(), new_hash.encode())
    partition = partition_for(new_hash.encode(), partitions)
    return Message(partition, key, (template.value or b"").replace(template_hash.encode(), new_hash.encode()))


@dataclass
class _Record:
    partition: int
    key: bytes | None
    value: bytes | None


async def _first_record(bootstrap: str, topic: str, deadline: float) -> _Record:
    """The first record of any partition of `topic`, waiting for one until `deadline`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                for r in batch:
                    return _Record(r.partition, r.key, r.value)
        raise TimeoutError(f"no record on {topic}")
    finally:
        await consumer.stop()


# --------------------------------------------------------------------------------------------------
# Profile


async def profile(run: Run, events: int, seconds: float, out_dir: Path, stamp: str) -> dict[str, object]:
    """py-spy on a pipeline worker draining `events`, for `seconds` from its first row."""
    lane = run.lane("profile")
    backlog = make_backlog(events, run.duplicate_share, run.partitions, seed=13)
    child = pipeline_worker(run, lane)
    table: Table | None = None
    raw = out_dir / f"profile-{stamp}.txt"
    try:
        async with asyncio.timeout(run.timeout(events) + seconds):
            deadline = time.monotonic() + run.timeout(events)
            await prepare(run, lane, pipeline=True)
            table = await Table.open(run.stack.dsn, lane.table)
            await produce(run.stack, lane.ingest_topic, backlog.messages)
            child.start()
            await wait_rows(table, 1, deadline=deadline, alive=child.exit_problem, interval=0.1)
            rows_before = await table.rows()
            samples = await profiling.record(child.pid, seconds, raw)
            rows_after = await table.rows()
    finally:
        child.stop()
        if table is not None:
            await table.close()
    summary = profiling.summarise(samples)
    return {
        "events": events,
        "seconds": seconds,
        "rows_while_sampling": rows_after - rows_before,
        "raw": _shown(raw.with_name(raw.name + ".gz")),
        **summary,
    }


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
