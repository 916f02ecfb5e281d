"""The `pipeline` console entry point: one Typer app, one module per command group."""

from __future__ import annotations

import typer

from pipeline.cli import config, demo, devstack, dlq, health, publish, topics, worker

app = typer.Typer(
    name="pipeline",
    help="Kafka-native delivery pipeline: ingest -> dedupe -> per-sink delivery.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("worker")(worker.worker)
app.command("publish")(publish.publish)
app.command("demo")(demo.demo)
app.command("health")(health.health)
app.add_typer(topics.app, name="topics", help="Plan and apply the topics declared in topics.yaml.")
app.add_typer(config.app, name="config")
app.add_typer(dlq.app, name="dlq", help="Dead-letter queues: stats, inspect, replay, export, import, purge.")
app.add_typer(devstack.app, name="devstack", help="Local Kafka and PostgreSQL for development and tests.")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
