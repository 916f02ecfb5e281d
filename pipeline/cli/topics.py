"""``pipeline topics plan|apply``: compare the cluster with topics.yaml, and bring it in line.

Exit codes: 0 in sync / changes applied; 1 error (bad topics file, bad settings, Kafka unreachable or
refusing a request); 2 unfixable drift (partition count or replication factor differs; never changed).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from pipeline.config import KafkaSettings
from pipeline.kafka_access import KafkaAccessError, check_kafka_access
from pipeline.redact import Redactor, install, redact
from pipeline.topics import (
    TopicCatalog,
    TopicPlan,
    TopicsBrokerError,
    TopicsFileError,
    apply_topics,
    load_topics,
    plan_topics,
)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_DRIFT = 2

app = typer.Typer(
    no_args_is_help=True,
    help="Plan and apply the Kafka topics declared in topics.yaml.",
    pretty_exceptions_enable=False,
)

FileOption = Annotated[
    Path | None,
    typer.Option(
        "--file",
        "-f",
        help="Topics file. Default: TOPICS_FILE (env or config file), else the catalog shipped with the package.",
        show_default=False,
        dir_okay=False,
    ),
]
ConfigFileOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file (default: $PIPELINE_CONFIG).", show_default=False),
]


def _fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    typer.echo(f"error: {redact(message)}", err=True)
    raise typer.Exit(code)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _prepare(file: Path | None, config: Path | None) -> tuple[TopicCatalog, KafkaSettings, dict[str, Any]]:
    """Load the settings and the topics file; exits with 1 on any problem."""
    # aiokafka logs connection failures itself; the command reports them as one line instead.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        from pipeline.config import load_settings_with_provenance

        settings, provenance = load_settings_with_provenance(config)
        install(Redactor.from_models(settings, secrets=settings.kafka.file_secrets()))
        for warning in provenance.warnings:
            typer.echo(f"warning: config: {warning}", err=True)
        topic_vars = settings.topic_vars()
        kafka = settings.kafka
        admin_kwargs = dict(settings.kafka.admin_kwargs())
    except Exception as exc:
        _fail(f"config: {_one_line(exc)}")
    path = file or settings.topics_path()
    try:
        catalog = load_topics(path, topic_vars)
    except TopicsFileError as exc:
        _fail(str(exc))
    return catalog, kafka, admin_kwargs


def _run(apply: bool, file: Path | None, config: Path | None) -> None:
    catalog, kafka, admin_kwargs = _prepare(file, config)
    bootstrap = kafka.bootstrap_servers
    operation = apply_topics if apply else plan_topics

    async def checked() -> TopicPlan:
        await check_kafka_access(kafka)
        return await operation(catalog, bootstrap, **admin_kwargs)

    try:
        result: TopicPlan = asyncio.run(checked())
    except KafkaAccessError as exc:
        _fail(str(exc))
    except TopicsBrokerError as exc:
        if exc.unreachable:
            _fail(f"cannot reach Kafka at {bootstrap} (KAFKA_BOOTSTRAP_SERVERS): {exc.reason}")
        _fail(_one_line(exc))
    except Exception as exc:
        _fail(f"{'apply' if apply else 'plan'} failed against Kafka at {bootstrap}: {_one_line(exc)}")
    typer.echo(result.render())
    if result.has_unfixable_drift:
        drifted = sorted({c.topic for c in result.changes if not c.fixable})
        _fail(
            f"unfixable drift in {len(drifted)} topic(s): {', '.join(drifted)}",
            EXIT_DRIFT,
        )


@app.command()
def plan(file: FileOption = None, config: ConfigFileOption = None) -> None:
    """Show what apply would change. Exit 0 if nothing is unfixable, 2 on unfixable drift."""
    _run(apply=False, file=file, config=config)


@app.command()
def apply(file: FileOption = None, config: ConfigFileOption = None) -> None:
    """Create missing topics and fix config values. Exit 0 when done, 2 on unfixable drift."""
    _run(apply=True, file=file, config=config)
