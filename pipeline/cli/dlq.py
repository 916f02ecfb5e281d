"""``pipeline dlq stats|inspect|replay|export|import|purge``: the dead-letter queues from the command line.
The work is done by pipeline.dlq (the admin API calls the same functions).

Exit codes: 0 done; 1 something failed (a replay transaction, Kafka unreachable or refusing, a bad import
line); 2 bad usage; 3 unknown sink; 4 a time that does not parse; 5 no pending event matches the filters;
6 not confirmed (declined, or no terminal to ask on and no --yes); 7 a topic is missing; 78 bad settings.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from aiokafka.errors import KafkaConnectionError, KafkaError

from pipeline.cli.common import fail, settings_or_exit
from pipeline.config import Settings
from pipeline.dlq import codec
from pipeline.dlq.errors import DlqError, NotConfirmed
from pipeline.dlq.filters import Filter
from pipeline.dlq.inspect import inspect as inspect_dlq
from pipeline.dlq.inspect import pretty
from pipeline.dlq.purge import PurgePlan, plan_purge
from pipeline.dlq.purge import purge as purge_dlq
from pipeline.dlq.replay import ReplayRequest, ReplaySummary
from pipeline.dlq.replay import replay as replay_dlq
from pipeline.dlq.stats import dlq_stats
from pipeline.dlq.timeparse import parse_time
from pipeline.dlq.transfer import export_dlq, import_dlq
from pipeline.topics import TopicCatalog, TopicsError, load_topics

EXIT_FAILED = 1

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)

T = TypeVar("T")

SinkOption = Annotated[str, typer.Option("--sink", "-s", help="A sink's name, or `ingest` for the ingest DLQ.")]
LimitOption = Annotated[int | None, typer.Option("--limit", min=1, help="At most this many matching events.")]
ClassOption = Annotated[str | None, typer.Option("--error-class", help="pipeline.error.class, exact.")]
ReasonOption = Annotated[str | None, typer.Option("--reason", help="pipeline.error.reason, exact.")]
SinceOption = Annotated[str | None, typer.Option("--since", help="Dead-lettered at or after: RFC 3339 or `2h` ago.")]
UntilOption = Annotated[str | None, typer.Option("--until", help="Dead-lettered before: RFC 3339 or `30m` ago.")]
KeyOption = Annotated[str | None, typer.Option("--key", help="The record key, exact.")]
JsonOption = Annotated[bool, typer.Option("--json", help="JSON (lines) instead of text.")]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask; needed without a terminal.")]
Config = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file (default: $PIPELINE_CONFIG).", show_default=False),
]


def _run(make: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(make)
    except DlqError as exc:
        fail(str(exc), exc.exit_code)
    except codec.CodecError as exc:
        fail(f"import: {exc}", EXIT_FAILED)
    except (KafkaError, OSError, TimeoutError) as exc:
        fail(f"kafka: {kafka_problem(exc)}", EXIT_FAILED)


def kafka_problem(exc: BaseException) -> str:
    """One line for a Kafka error: its class once (aiokafka's own text often starts with it already), and
    the setting to check when no broker could be reached."""
    name, text = type(exc).__name__, str(exc)
    while text.startswith(f"{name}: "):
        text = text[len(name) + 2 :]
    line = f"{name}: {text}" if text and text != name else name
    if isinstance(exc, KafkaConnectionError | OSError | TimeoutError):
        line += " (no broker answered: check KAFKA_BOOTSTRAP_SERVERS)"
    return line


def _load(config: Path | None) -> tuple[Settings, TopicCatalog]:
    settings, _ = settings_or_exit(config)
    try:
        return settings, load_topics(settings.topics_path(), settings.topic_vars())
    except (TopicsError, ValueError) as exc:
        fail(f"topics: {exc}", EXIT_FAILED)


def _filter(
    error_class: str | None, reason: str | None, since: str | None, until: str | None, key: str | None
) -> Filter:
    try:
        return Filter(
            error_class=error_class,
            reason=reason,
            since=parse_time(since) if since else None,
            until=parse_time(until) if until else None,
            key=key,
        )
    except DlqError as exc:
        fail(str(exc), exc.exit_code)


def _confirm(question: str, yes: bool) -> bool:
    """True with --yes; asks on a terminal; never prompts without one (NotConfirmed)."""
    if yes:
        return True
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        raise NotConfirmed(f"{question} needs confirmation: no terminal to ask on, pass --yes")
    return typer.confirm(question, default=False, err=True)


@app.command("stats")
def stats(json_out: JsonOption = False, config: Config = None) -> None:
    """Per DLQ: pending events (not yet replayed), oldest and newest, counts by reason, class and origin."""
    settings, catalog = _load(config)
    found = _run(dlq_stats(settings, catalog))
    if json_out:
        typer.echo(json.dumps([s.as_dict() for s in found], indent=2))
        return
    for s in found:
        d = s.as_dict()
        typer.echo(f"{s.name} ({s.topic}): {s.pending} pending, {s.replayed} replayed")
        if s.pending:
            typer.echo(f"  oldest {d['oldest']}  newest {d['newest']}")
            for title, counts in (("reason", s.by_reason), ("class", s.by_class), ("origin", s.by_origin)):
                typer.echo(f"  by {title}: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))


@app.command("inspect")
def inspect(
    sink: SinkOption,
    limit: LimitOption = 20,
    error_class: ClassOption = None,
    reason: ReasonOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    key: KeyOption = None,
    json_out: JsonOption = False,
    config: Config = None,
) -> None:
    """The pending events that match, with their headers and payload (JSON lines with --json)."""
    flt = _filter(error_class, reason, since, until, key)
    settings, catalog = _load(config)
    found = _run(inspect_dlq(settings, catalog, sink, flt, limit))
    for record in found:
        typer.echo(codec.encode(record) if json_out else pretty(record) + "\n")


def _progress(summary: ReplaySummary) -> None:
    total = max(1, len(summary.planned))
    done = summary.matched
    width = 30
    bar = "#" * (width * done // total)
    sys.stderr.write(
        f"\r[{bar:<{width}}] {done}/{total} re-sent {summary.resent} parked {summary.parked} skipped {summary.skipped}"
    )
    sys.stderr.flush()


def _summary_lines(summary: ReplaySummary, dry_run: bool) -> list[str]:
    if dry_run:
        resend = len(summary.planned) - summary.would_park
        lines = [
            f"dry run: {len(summary.planned)} matched in {summary.dlq}; would re-send {resend} to "
            f"{summary.destination}, park {summary.would_park}; nothing changed"
        ]
        if summary.would_park:
            lines.append(f"  would park {summary.would_park}: {summary.parked_why}, to {summary.parked_topic}")
        return lines
    lines = [
        f"matched {summary.matched}, re-sent {summary.resent} to {summary.destination}, "
        f"skipped {summary.skipped} (kept pending), parked {summary.parked}, failed {summary.failed}"
    ]
    if summary.parked:
        lines.append(f"  parked {summary.parked}: {summary.parked_why}, to {summary.parked_topic}")
    return lines


@app.command("replay")
def replay(
    sink: SinkOption,
    error_class: ClassOption = None,
    reason: ReasonOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    key: KeyOption = None,
    rate: Annotated[float | None, typer.Option("--rate", min=0.001, help="At most N events per second.")] = None,
    limit: LimitOption = None,
    to: Annotated[str, typer.Option("--to", help="sink: the sink's topic; retry: its first retry tier.")] = "sink",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be re-sent; change nothing.")] = False,
    yes: YesOption = False,
    json_out: JsonOption = False,
    config: Config = None,
) -> None:
    """Re-send the matching pending events exactly once (the ingest DLQ to the ingest topic)."""
    if to not in ("sink", "retry"):
        fail(f"--to must be sink or retry, not {to!r}", 2)
    destination: Literal["sink", "retry"] = "sink" if to == "sink" else "retry"
    flt = _filter(error_class, reason, since, until, key)
    settings, catalog = _load(config)
    request = ReplayRequest(sink=sink, flt=flt, limit=limit, to=destination, rate=rate, dry_run=dry_run)
    show_progress = sys.stderr.isatty()

    def ask(summary: ReplaySummary) -> bool:
        parks = f", park {summary.would_park}" if summary.would_park else ""
        question = (
            f"re-send {len(summary.planned) - summary.would_park} events from {summary.dlq} to "
            f"{summary.destination}{parks}?"
        )
        return _confirm(question, yes)

    summary: ReplaySummary | None = None
    failed = False
    try:
        summary = asyncio.run(
            replay_dlq(settings, catalog, request, confirm=ask, progress=_progress if show_progress else None)
        )
    except DlqError as exc:
        got = getattr(exc, "summary", None)
        if not isinstance(got, ReplaySummary):
            fail(str(exc), exc.exit_code)
        summary, failed = got, True
        typer.echo(f"error: {exc}", err=True)
    except (KafkaError, OSError, TimeoutError) as exc:
        fail(f"kafka: {kafka_problem(exc)}", EXIT_FAILED)
    if show_progress and not dry_run:
        sys.stderr.write("\n")
    if dry_run:
        for record, action in summary.planned:
            line = codec.encode(record) if json_out else pretty(record)
            typer.echo(f"{action} {line}" if not json_out else line)
    if json_out:
        typer.echo(json.dumps(summary.as_dict()), err=dry_run)
    else:
        for line in _summary_lines(summary, dry_run):
            typer.echo(line, err=dry_run)
    if failed:
        raise typer.Exit(EXIT_FAILED)


@app.command("export")
def export(
    sink: SinkOption,
    out: Annotated[Path, typer.Option("--out", "-o", help="JSON lines file to write ('-': stdout).")],
    error_class: ClassOption = None,
    reason: ReasonOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    key: KeyOption = None,
    config: Config = None,
) -> None:
    """Write the matching pending events as JSON lines: key, value, headers, timestamp; lossless."""
    flt = _filter(error_class, reason, since, until, key)
    settings, catalog = _load(config)
    if str(out) == "-":
        count = _run(export_dlq(settings, catalog, sink, flt, sys.stdout))
    else:
        try:
            handle = out.open("w", encoding="utf-8")
        except OSError as exc:
            fail(f"export: cannot write {out}: {exc.strerror}", EXIT_FAILED)
        with handle:
            count = _run(export_dlq(settings, catalog, sink, flt, handle))
    typer.echo(f"exported {count} events to {out}", err=True)


@app.command("import")
def import_(
    sink: SinkOption,
    file: Annotated[Path, typer.Argument(help="JSON lines file from `dlq export` ('-': stdin).")],
    config: Config = None,
) -> None:
    """Append the events of FILE to the DLQ, with their keys, headers and timestamps."""
    settings, catalog = _load(config)
    if str(file) == "-":
        lines = sys.stdin.read().splitlines()
    else:
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            fail(f"import: cannot read {file}: {exc.strerror}", EXIT_FAILED)
    count = _run(import_dlq(settings, catalog, sink, lines))
    typer.echo(f"imported {count} events into the {sink} DLQ")


def _removed(plan: PurgePlan) -> str:
    parts = ", ".join(f"partition {p.tp.partition}: offsets {p.first}..{p.before - 1}" for p in plan.parts if p.count)
    return f"{plan.count} events from {plan.topic}" + (f" ({parts})" if parts else "")


@app.command("purge")
def purge(
    sink: SinkOption,
    before: Annotated[str | None, typer.Option("--before", help="Delete events older than this.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Delete every event.")] = False,
    yes: YesOption = False,
    config: Config = None,
) -> None:
    """Delete dead letters: Kafka deletes only a prefix of each partition (every record before an offset);
    --before finds that offset from the time (the first record at or after it stays, and all after it)."""
    if (before is None) == (not all_):
        fail("give exactly one of --before T or --all", 2)
    try:
        moment = parse_time(before) if before else None
    except DlqError as exc:
        fail(str(exc), exc.exit_code)
    settings, catalog = _load(config)
    plan = _run(plan_purge(settings, catalog, sink, moment))
    if not plan.count:
        typer.echo(f"nothing to purge in {plan.topic}")
        return
    try:
        confirmed = _confirm(f"delete {_removed(plan)}?", yes)
    except NotConfirmed as exc:
        fail(str(exc), exc.exit_code)
    if not confirmed:
        fail("purge not confirmed; nothing was deleted", NotConfirmed.exit_code)
    done = _run(purge_dlq(settings, plan))
    typer.echo(f"removed {_removed(done)}")
