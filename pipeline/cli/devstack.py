"""Placeholder: replaced by the devstack command group."""

import typer

app = typer.Typer(no_args_is_help=True)
