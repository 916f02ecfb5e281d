"""The `pipeline` console entry point: one Typer app, one module per command group."""

from __future__ import annotations

import typer

from pipeline.cli import devstack, topics

app = typer.Typer(
    name="pipeline",
    help="Kafka-native delivery pipeline: ingest -> dedupe -> per-sink delivery.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(devstack.app, name="devstack")
app.add_typer(topics.app, name="topics")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
