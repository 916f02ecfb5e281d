"""`pipeline demo`: the whole pipeline on the local stack, start to finish.

Starts (or reuses) the devstack Kafka and PostgreSQL, applies the topics, runs a worker, publishes a
demo batch with duplicates and a few malformed lines, waits until everything has landed, prints what
landed, and stops what it started.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import typer
from rich.console import Console
from rich.table import Table

from pipeline.devstack.kafka import DevstackError, kafka_down, kafka_up, state_root
from pipeline.devstack.postgres import postgres_down, postgres_up
from pipeline.observability.lag import topic_size

console = Console(stderr=True)

DEMO_ENV = {
    "PIPELINE_APP_ID": "pipeline-demo",
    "INGEST_TOPIC": "demo.events.ingest",
    "TOPIC_PREFIX": "demo.",
    "TSDB_ENABLED": "true",
    "TSDB_TABLE": "demo_events",
    "TSDB_LINGER_MS": "100",
    "WEB_ENABLED": "false",
    "LOG_FORMAT": "json",
    "KAFKA_TOPIC_PARTITIONS": "4",
}


def demo(
    events: int = typer.Option(1000, min=1, max=200_000, help="Unique events to publish."),
    duplicates: int = typer.Option(300, min=0, help="Extra copies of some of them (other partitions)."),
    keep_running: bool = typer.Option(False, help="Leave Kafka and PostgreSQL running afterwards."),
    timeout: float = typer.Option(180.0, help="Seconds to wait for everything to land."),
) -> None:
    """Run the pipeline end to end on the local stack and show what landed."""
    workdir = state_root() / "demo"
    workdir.mkdir(parents=True, exist_ok=True)
    started_kafka = started_pg = False
    worker: subprocess.Popen[bytes] | None = None
    try:
        console.print("[bold]1/5[/] Kafka (fetches the broker jars from Maven Central the first time)")
        kafka, started_kafka = kafka_up()
        console.print(f"     Kafka {kafka.version} at {kafka.bootstrap}")
        console.print("[bold]2/5[/] PostgreSQL")
        pg, started_pg = postgres_up()
        console.print(f"     PostgreSQL at 127.0.0.1:{pg.port}")
        assert kafka.bootstrap and pg.dsn
        env = {
            **os.environ,
            **DEMO_ENV,
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
            "TSDB_DSN": pg.dsn,
            "PIPELINE_DATA_DIR": str(workdir / "data"),
            "PIPELINE_CONFIG": "",
        }
        console.print("[bold]3/5[/] topics and worker")
        # The worker's local dedupe store belongs to the broker whose changelog it mirrors: after
        # `devstack kafka down --wipe` the kept store is ahead of the new, empty changelog and Faust
        # refuses to start (ConsistencyError). Each demo run has its own events, so it starts afresh.
        shutil.rmtree(workdir / "data", ignore_errors=True)
        _run([sys.executable, "-m", "pipeline.cli.main", "topics", "apply"], env)
        log_path = workdir / "worker.log"
        with log_path.open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli.main", "worker"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        console.print(f"     worker pid {worker.pid}, log {log_path}")

        run_id = uuid.uuid4().hex[:8]
        batch = workdir / f"demo-{run_id}.jsonl"
        _write_demo_batch(batch, run_id, events, duplicates)
        console.print(
            f"[bold]4/5[/] publishing {events} events + {duplicates} duplicates + 3 malformed lines ({batch.name})"
        )
        dlq = DEMO_ENV["INGEST_TOPIC"] + ".dlq"
        dlq_before = asyncio.run(topic_size(kafka.bootstrap, dlq))
        _run([sys.executable, "-m", "pipeline.cli.main", "publish", str(batch), "--no-validate"], env)

        console.print("[bold]5/5[/] waiting for the rows to land")
        rows = asyncio.run(_wait_rows(pg.dsn, run_id, events, timeout, worker))
        dead = asyncio.run(topic_size(kafka.bootstrap, dlq)) - dlq_before
        _report(pg.dsn, run_id, events, duplicates, rows, dead, dlq)
    except DevstackError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
        if not keep_running:
            if started_kafka:
                kafka_down()
            if started_pg:
                postgres_down()
            if started_kafka or started_pg:
                console.print("stopped the local Kafka and PostgreSQL this demo started")


def _run(cmd: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    output = (result.stdout + result.stderr).strip()
    if output:
        console.print("     " + output.replace("\n", "\n     "))
    if result.returncode != 0:
        raise DevstackError(f"{' '.join(cmd[3:])} failed with exit code {result.returncode}")


def _write_demo_batch(path: Path, run_id: str, events: int, duplicates: int) -> None:
    rng = random.Random(run_id)
    now = time.time()
    lines = []
    for n in range(events):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now + n / 1000)) + f".{n % 1000:03d}Z"
        event = {
            "timestamp": stamp,
            "source": f"demo-{run_id}",
            "type": rng.choice(["engine.temp", "gps.fix", "bilge.level"]),
            "labels": {"vessel": f"vessel-{n % 5}"},
            "payload": {"n": n, "value": round(rng.uniform(10, 90), 2)},
        }
        lines.append(json.dumps(event))
    lines += [lines[rng.randrange(events)] for _ in range(duplicates)]
    lines += ["this line is not JSON", '{"source": 42}', '{"timestamp": "2026-01-01T00:00:00Z"}']
    rng.shuffle(lines)
    path.write_text("\n".join(lines) + "\n")


async def _wait_rows(dsn: str, run_id: str, expected: int, timeout: float, worker: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + timeout
    rows = 0
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise DevstackError(f"the worker exited with code {worker.returncode}; see its log")
        try:
            conn = await asyncpg.connect(dsn)
            try:
                if await conn.fetchval("SELECT to_regclass('demo_events')") is not None:
                    rows = int(
                        await conn.fetchval("SELECT count(*) FROM demo_events WHERE source = $1", f"demo-{run_id}")
                    )
            finally:
                await conn.close()
        except OSError:
            pass
        if rows >= expected:
            return rows
        await asyncio.sleep(0.5)
    raise DevstackError(f"only {rows} of {expected} rows landed within {timeout:.0f}s; see the worker log")


def _report(dsn: str, run_id: str, events: int, duplicates: int, rows: int, dead: int, dlq: str) -> None:
    async def sample() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(
                await conn.fetch(
                    "SELECT time, left(event_hash, 12) AS hash, type, labels::text, payload::text "
                    "FROM demo_events WHERE source = $1 ORDER BY time LIMIT 5",
                    f"demo-{run_id}",
                )
            )
        finally:
            await conn.close()

    table = Table("time", "hash", "type", "labels", "payload", title="first rows in demo_events")
    for record in asyncio.run(sample()):
        table.add_row(str(record["time"]), record["hash"], record["type"], record["labels"], record["payload"])
    out = Console()
    out.print(table)
    out.print(
        f"published {events + duplicates + 3} lines: {events} unique events, {duplicates} duplicates, 3 malformed\n"
        f"[bold green]landed {rows} rows[/] in table demo_events (duplicates dropped: {events + duplicates - rows}); "
        f"{dead} malformed lines in topic {dlq}, each with its reason in the headers"
    )
