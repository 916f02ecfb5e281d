"""`pipeline publish FILE|-`: send JSON lines to the ingest topic."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import typer

from pipeline.cli.common import ConfigOption, fail, settings_or_exit
from pipeline.publisher import Publisher, PublishResult


def publish(
    source: str = typer.Argument(..., help="A file of JSON lines, or - for standard input."),
    config: Path | None = ConfigOption,
    topic: str | None = typer.Option(None, help="Topic to publish to (default: INGEST_TOPIC)."),
    key_field: str = typer.Option("source", help="Event field used as the Kafka key ('' for none)."),
    header: list[str] = typer.Option([], "--header", "-H", help="NAME=VALUE header on every message."),
    validate: bool = typer.Option(True, help="Check each line is a valid event before sending it."),
    progress: bool | None = typer.Option(None, help="Progress bar (default: when stderr is a terminal)."),
) -> None:
    """Publish events (one JSON object per line) with acks=all; prints how many were sent and rejected."""
    settings, _ = settings_or_exit(config)
    headers = {}
    for item in header:
        name, sep, value = item.partition("=")
        if not sep or not name:
            fail(f"--header {item!r}: expected NAME=VALUE")
        headers[name] = value
    stream: BinaryIO
    if source == "-":
        stream, total = sys.stdin.buffer, None
    else:
        path = Path(source)
        if path.is_dir():
            fail(f"{source}: a directory, not a file of events")
        try:
            stream, total = path.open("rb"), path.stat().st_size
        except OSError as exc:
            fail(f"{source}: cannot read it: {exc.strerror}")
    show_progress = sys.stderr.isatty() if progress is None else progress
    try:
        result = asyncio.run(_publish(settings, stream, total, topic, key_field, headers, validate, show_progress))
    except OSError as exc:
        fail(f"cannot publish to Kafka at {settings.kafka.bootstrap_servers} (KAFKA_BOOTSTRAP_SERVERS): {exc}")
    for number, problem in result.problems[:20]:
        typer.echo(f"line {number}: rejected: {problem}", err=True)
    if len(result.problems) > 20:
        typer.echo(f"... and {len(result.problems) - 20} more rejected lines", err=True)
    typer.echo(f"sent {result.sent}, rejected {result.rejected}", err=True)
    if result.rejected:
        raise typer.Exit(1)


async def _publish(
    settings: object,
    stream: BinaryIO,
    total: int | None,
    topic: str | None,
    key_field: str,
    headers: dict[str, str],
    validate: bool,
    show_progress: bool,
) -> PublishResult:
    from aiokafka.errors import KafkaError
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from pipeline.config import Settings

    assert isinstance(settings, Settings)
    try:
        async with Publisher(
            settings, topic=topic, key_field=key_field or None, validate=validate, headers=headers
        ) as publisher:
            if not show_progress:
                return await publisher.send_lines(_lines(stream))
            with Progress(
                TextColumn("publishing"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=True
            ) as bar:
                task = bar.add_task("publish", total=total)
                return await publisher.send_lines(_lines(stream), on_line=lambda n: bar.advance(task, n))
    except KafkaError as exc:
        raise OSError(str(exc)) from exc


def _lines(stream: BinaryIO) -> Iterator[bytes]:
    yield from stream
