"""Placeholder: replaced by the topics command group."""

import typer

app = typer.Typer(no_args_is_help=True)
