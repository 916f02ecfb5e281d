"""`pipeline config show`: the effective configuration, the source of each value, secrets masked."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from pipeline.cli.common import ConfigOption, settings_or_exit
from pipeline.config import display_value, iter_effective

app = typer.Typer(no_args_is_help=True, help="Inspect the configuration.")


@app.command("show")
def show(
    config: Path | None = ConfigOption,
    as_json: bool = typer.Option(False, "--json", help="One JSON object: path -> {value, source}."),
    only_enabled: bool = typer.Option(False, "--enabled-sinks", help="Hide the settings of disabled sinks."),
) -> None:
    """Print every setting with its effective value and where it came from (env, file:line, default)."""
    settings, provenance = settings_or_exit(config)
    rows = []
    for path, value in iter_effective(settings):
        parts = path.split(".")
        if only_enabled and parts[0] == "sinks" and not settings.sinks[parts[1]].enabled:
            continue
        rows.append((path, display_value(path, value), provenance.source_of(path)))
    if as_json:
        typer.echo(json.dumps({p: {"value": v, "source": s} for p, v, s in rows}, indent=2))
        return
    table = Table("setting", "value", "source", box=None, pad_edge=False)
    for row in rows:
        table.add_row(*row)
    Console(width=200).print(table)
