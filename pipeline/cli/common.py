"""What every command shares: loading the settings and turning known errors into one clear line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import typer

from pipeline.config import ConfigError, Provenance, Settings, load_settings_with_provenance
from pipeline.redact import Redactor, install, redact

EX_CONFIG = 78  # sysexits.h: configuration error

ConfigOption = typer.Option(
    None, "--config", "-c", help="YAML config file (default: $PIPELINE_CONFIG).", show_default=False
)


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {redact(message)}", err=True)
    raise typer.Exit(code)


def settings_or_exit(config: Path | None, *, echo_warnings: bool = True) -> tuple[Settings, Provenance]:
    """The settings, or exit 78 with the config error; installs the process's redactor built from them
    (pipeline.redact). Warnings (a misspelt env variable) go to stderr;
    `echo_warnings=False` leaves them to the caller (the worker logs them once its logging is set up)."""
    try:
        settings, provenance = load_settings_with_provenance(config)
    except ConfigError as exc:
        fail(f"config: {exc}", EX_CONFIG)
    install(Redactor.from_models(settings, secrets=settings.kafka.file_secrets()))
    if echo_warnings:
        for warning in provenance.warnings:
            typer.echo(f"warning: config: {warning}", err=True)
    return settings, provenance


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()
