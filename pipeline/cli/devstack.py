"""`pipeline devstack`: a local Kafka broker and PostgreSQL server without Docker.

    pipeline devstack kafka up [--version 3.9.2|4.1.1] [--port 9092]
    pipeline devstack kafka status | down [--wipe]
    pipeline devstack postgres up [--port 55432]      # prints the DSN
    pipeline devstack postgres status | down

Both run as detached daemons whose state lives in ``$PIPELINE_STATE_DIR`` (default
``~/.local/state/pipeline``); ``status`` exits 0 when running and 3 when not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from pipeline.devstack.kafka import (
    DEFAULT_DAEMON_PORT,
    DevstackError,
    default_kafka_state_dir,
    kafka_down,
    kafka_jars_cached,
    kafka_status,
    kafka_up,
    resolve_kafka_version,
)
from pipeline.devstack.postgres import (
    DEFAULT_POSTGRES_PORT,
    default_postgres_state_dir,
    postgres_down,
    postgres_status,
    postgres_up,
)

app = typer.Typer(
    no_args_is_help=True,
    help="A local Kafka broker and PostgreSQL server for development (no Docker needed).",
)
kafka_app = typer.Typer(no_args_is_help=True, help="A single-node Kafka (KRaft) broker on 127.0.0.1.")
postgres_app = typer.Typer(no_args_is_help=True, help="A throwaway PostgreSQL server on 127.0.0.1.")
app.add_typer(kafka_app, name="kafka")
app.add_typer(postgres_app, name="postgres")

NOT_RUNNING_EXIT = 3

StateDirOption = Annotated[
    Path | None,
    typer.Option("--state-dir", help="State directory (default: $PIPELINE_STATE_DIR/<service>)."),
]


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


# -- kafka ------------------------------------------------------------------------------------------


@kafka_app.command("up")
def kafka_up_cmd(
    version: Annotated[
        str | None,
        typer.Option("--version", help="Kafka version (default: $KAFKA_VERSION, else 3.9.2)."),
    ] = None,
    port: Annotated[int, typer.Option("--port", help="Client (PLAINTEXT) port.")] = DEFAULT_DAEMON_PORT,
    state_dir: StateDirOption = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for readiness.")] = 90.0,
) -> None:
    """Start the broker in the background (does nothing if it is already running)."""
    directory = state_dir or default_kafka_state_dir()
    try:
        wanted = resolve_kafka_version(version)
        current = kafka_status(directory)
        if not current.running:
            if not kafka_jars_cached(wanted):
                typer.echo(f"Fetching the Kafka {wanted} jars with Maven (first run only)...")
            typer.echo(f"Starting Kafka {wanted} on 127.0.0.1:{port} ...")
        status, started = kafka_up(state_dir=directory, version=wanted, port=port, timeout=timeout)
    except DevstackError as exc:
        _fail(str(exc))
    if started:
        typer.echo(f"Kafka {status.version} is up: bootstrap {status.bootstrap} (pid {status.pid})")
        typer.echo(f"  state: {status.state_dir}  log: {status.log_file}")
        return
    typer.echo(f"Kafka {status.version} is already running: bootstrap {status.bootstrap} (pid {status.pid})")
    if status.version != wanted or status.bootstrap != f"127.0.0.1:{port}":
        typer.echo(
            f"  note: you asked for Kafka {wanted} on port {port}; "
            "run `pipeline devstack kafka down` first to change it."
        )


@kafka_app.command("down")
def kafka_down_cmd(
    state_dir: StateDirOption = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds before SIGKILL.")] = 30.0,
    wipe: Annotated[bool, typer.Option("--wipe", help="Also delete its data: the next `up` starts empty.")] = False,
) -> None:
    """Stop the background broker (its data is kept unless --wipe)."""
    try:
        status = kafka_down(state_dir or default_kafka_state_dir(), timeout, wipe=wipe)
    except DevstackError as exc:
        _fail(str(exc))
    if status.running:
        typer.echo(f"Kafka {status.version} stopped (was pid {status.pid}, {status.bootstrap}).")
    else:
        typer.echo("Kafka is not running.")
    if wipe:
        typer.echo(f"Its data in {status.state_dir} is deleted.")


@kafka_app.command("status")
def kafka_status_cmd(state_dir: StateDirOption = None) -> None:
    """Show whether the background broker is running (exit 3 when it is not)."""
    status = kafka_status(state_dir or default_kafka_state_dir())
    if not status.running:
        typer.echo(f"Kafka: not running (state: {status.state_dir})")
        raise typer.Exit(NOT_RUNNING_EXIT)
    typer.echo(f"Kafka: running, version {status.version}, bootstrap {status.bootstrap}, pid {status.pid}")
    typer.echo(f"  state: {status.state_dir}  log: {status.log_file}")


# -- postgres ---------------------------------------------------------------------------------------


@postgres_app.command("up")
def postgres_up_cmd(
    port: Annotated[int, typer.Option("--port", help="TCP port on 127.0.0.1.")] = DEFAULT_POSTGRES_PORT,
    state_dir: StateDirOption = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for readiness.")] = 60.0,
) -> None:
    """Start PostgreSQL in the background (initialising it the first time) and print its DSN."""
    directory = state_dir or default_postgres_state_dir()
    try:
        current = postgres_status(directory)
        if not current.running:
            typer.echo(f"Starting PostgreSQL on 127.0.0.1:{port} ...", err=True)
        status, started = postgres_up(state_dir=directory, port=port, timeout=timeout)
    except DevstackError as exc:
        _fail(str(exc))
    if started:
        typer.echo(f"PostgreSQL is up (pid {status.pid}, data: {status.data_dir}).", err=True)
    else:
        typer.echo(f"PostgreSQL is already running (pid {status.pid}, port {status.port}).", err=True)
        if status.port != port:
            typer.echo("  note: run `pipeline devstack postgres down` first to change the port.", err=True)
    typer.echo(status.dsn)


@postgres_app.command("down")
def postgres_down_cmd(
    state_dir: StateDirOption = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds before SIGKILL.")] = 30.0,
) -> None:
    """Stop the background PostgreSQL (its data is kept)."""
    try:
        status = postgres_down(state_dir or default_postgres_state_dir(), timeout)
    except DevstackError as exc:
        _fail(str(exc))
    if status.running:
        typer.echo(f"PostgreSQL stopped (was pid {status.pid}, port {status.port}).")
    else:
        typer.echo("PostgreSQL is not running.")


@postgres_app.command("status")
def postgres_status_cmd(state_dir: StateDirOption = None) -> None:
    """Show whether the background PostgreSQL is running (exit 3 when it is not)."""
    try:
        status = postgres_status(state_dir or default_postgres_state_dir())
    except DevstackError as exc:
        _fail(str(exc))
    if not status.running:
        typer.echo(f"PostgreSQL: not running (state: {status.state_dir})")
        raise typer.Exit(NOT_RUNNING_EXIT)
    typer.echo(f"PostgreSQL: running, port {status.port}, pid {status.pid}")
    typer.echo(f"  dsn: {status.dsn}")
    typer.echo(f"  data: {status.data_dir}  log: {status.log_file}")
