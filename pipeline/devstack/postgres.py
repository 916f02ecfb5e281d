"""A throwaway PostgreSQL server from the distribution's binaries (Debian: ``apt-get install postgresql``).

Layout, for ``PostgresServer(data_dir=<state>/data)``::

    <state>/password        the generated password of superuser ``pipeline`` (mode 0600)
    <state>/postgres.json   daemon state (port, pid) written by ``postgres_up`` (mode 0600)
    <state>/data/           PGDATA
    <state>/run/            unix socket and ``postgres.log``

PostgreSQL refuses to run as root, so when the effective uid is 0 initdb/pg_ctl run as the
``postgres`` OS user (``runuser -u postgres``) and ``data/`` and ``run/`` are owned by it. That user
must be able to traverse ``<state>``; when it cannot (e.g. under a 0700 ``/root``), ``data/`` and
``run/`` are placed instead in ``~postgres/pipeline-devstack/<hash of state dir>/`` (or
``/var/tmp/...``) and the password and state file stay in ``<state>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.devstack.kafka import (
    HOST,
    DevstackError,
    file_lock,
    free_port,
    log_tail,
    pid_alive,
    port_is_free,
    read_json,
    state_root,
    terminate_pid,
    write_json_atomic,
)

__all__ = [
    "DATABASE",
    "DEFAULT_POSTGRES_PORT",
    "USER",
    "PostgresServer",
    "PostgresStatus",
    "default_postgres_state_dir",
    "find_pg_bin",
    "postgres_down",
    "postgres_for_tests",
    "postgres_status",
    "postgres_up",
]

DEFAULT_POSTGRES_PORT = 55432
USER = "pipeline"
DATABASE = "pipeline"
OS_USER = "postgres"
_STATE_FILE = "postgres.json"
_REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres", "pg_isready", "psql", "createdb")


def find_pg_bin() -> Path:
    """The directory holding initdb/pg_ctl/postgres.

    ``$PG_BIN``; else ``pg_config --bindir``; else the newest ``/usr/lib/postgresql/*/bin``.
    """

    def complete(path: Path) -> bool:
        return all((path / name).is_file() for name in _REQUIRED_BINARIES)

    env = os.environ.get("PG_BIN")
    if env:
        if not complete(Path(env)):
            raise DevstackError(f"PG_BIN={env} does not contain all of {', '.join(_REQUIRED_BINARIES)}")
        return Path(env)
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            candidate = Path(out.stdout.strip())
            if out.returncode == 0 and out.stdout.strip() and complete(candidate):
                return candidate

    def major(path: Path) -> tuple[int, str]:
        name = path.parent.name
        return (int(name), name) if name.isdigit() else (-1, name)

    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=major, reverse=True):
        if complete(candidate):
            return candidate
    raise DevstackError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found: install them with "
        "`apt-get install postgresql`, or point PG_BIN at the directory that holds them."
    )


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _os_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(OS_USER)
    except KeyError:
        raise DevstackError(
            f"running as root, PostgreSQL must run as the {OS_USER!r} OS user, which does not exist; "
            "`apt-get install postgresql` creates it (or run as a non-root user)"
        ) from None


def _can_traverse(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether ``user`` may search every existing directory from / down to ``path`` (ignores ACLs)."""
    gids = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for directory in [path, *path.parents]:
        try:
            st = directory.stat()
        except FileNotFoundError:
            continue
        if st.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


class PostgresServer:
    """One PostgreSQL cluster with superuser ``pipeline`` and database ``pipeline`` on 127.0.0.1.

    ``data_dir`` is PGDATA; its parent is the server's state dir (password, socket dir, log) and
    should be dedicated to it. ``fast=True`` turns off fsync & co. (tests only: not crash-safe).
    """

    def __init__(
        self,
        *,
        data_dir: Path,
        port: int | None = None,
        fast: bool = False,
        bin_dir: Path | None = None,
    ) -> None:
        self.state_dir = Path(data_dir).expanduser().absolute().parent
        self.port = port if port is not None else free_port()
        self.fast = fast
        self._bin_dir = bin_dir
        self._requested_data_dir = Path(data_dir).expanduser().absolute()
        self.data_dir, self.run_dir = self._layout()

    # -- paths ---------------------------------------------------------------------------------
    def _layout(self) -> tuple[Path, Path]:
        if _running_as_root() and not _can_traverse(self.state_dir, _os_user()):
            digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:12]
            home = Path(_os_user().pw_dir)
            if home.is_dir() and _can_traverse(home, _os_user()) and home.stat().st_uid == _os_user().pw_uid:
                base = home / "pipeline-devstack" / digest
            else:
                base = Path("/var/tmp") / f"pipeline-postgres-{digest}"
            return base / "data", base / "run"
        return self._requested_data_dir, self.state_dir / "run"

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = find_pg_bin()
        return self._bin_dir

    @property
    def password_file(self) -> Path:
        return self.state_dir / "password"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "postgres.log"

    @property
    def password(self) -> str:
        try:
            return self.password_file.read_text().strip()
        except FileNotFoundError:
            raise DevstackError(f"no password file at {self.password_file}: start the server first") from None

    @property
    def dsn(self) -> str:
        return f"postgresql://{USER}:{self.password}@{HOST}:{self.port}/{DATABASE}"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid from ``postmaster.pid`` when it is running."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid, str(self.data_dir)) else None

    def is_running(self) -> bool:
        return self.pid is not None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, timeout: float = 60.0, *, detach: bool = False) -> str:
        """Initialise (first time), start and wait until the server accepts logins; return the DSN.

        ``detach=True`` starts the server in a new session (a daemon that ignores the terminal's
        Ctrl-C). On failure a :class:`DevstackError` with the end of the server log is raised.
        """
        if self.is_running():
            return self.dsn
        deadline = time.monotonic() + timeout
        if not port_is_free(self.port):
            raise DevstackError(f"cannot start PostgreSQL: port {HOST}:{self.port} is already in use")
        self._prepare_dirs()
        if not (self.data_dir / "PG_VERSION").is_file():
            self._initdb()
        self._write_conf()
        with contextlib.suppress(FileNotFoundError):
            self.log_file.unlink()
        proc = self._run(
            [
                str(self.bin_dir / "pg_ctl"),
                "start",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                str(max(1, int(deadline - time.monotonic()))),
            ],
            as_os_user=True,
            new_session=detach,
        )
        if proc.returncode != 0:
            self._cleanup_failed_start()
            raise DevstackError(
                f"PostgreSQL did not start (pg_ctl exit {proc.returncode}: {proc.stdout.strip()}); "
                f"last lines of {self.log_file}:\n{log_tail(self.log_file)}"
            )
        try:
            self._wait_accepting(deadline, timeout)
            self._ensure_database()
        except BaseException:
            self.stop()
            raise
        return self.dsn

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (disconnects clients); SIGKILL after ``timeout`` seconds."""
        pid = self.pid
        if pid is None:
            return
        pg_ctl = str(self.bin_dir / "pg_ctl")
        wait = str(max(1, int(timeout)))
        cmd = [pg_ctl, "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", wait]
        proc = self._run(cmd, as_os_user=True)
        if proc.returncode != 0 or pid_alive(pid):
            terminate_pid(pid, 5.0)

    def destroy(self) -> None:
        """Stop the server and delete its data, socket dir, log and password."""
        self.stop()
        for path in (self.data_dir, self.run_dir):
            shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.password_file.unlink()
        if self.data_dir.parent != self.state_dir:  # relocated: remove the per-state-dir base too
            shutil.rmtree(self.data_dir.parent, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals -----------------------------------------------------------------------------
    def _run(
        self,
        cmd: Sequence[str],
        *,
        as_os_user: bool = False,
        new_session: bool = False,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        full = list(cmd)
        if as_os_user and _running_as_root():
            full = ["runuser", "-u", OS_USER, "--", *full]
        return subprocess.run(
            full,
            cwd="/",  # the OS user may not be able to read the caller's cwd
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            start_new_session=new_session,
        )

    def _prepare_dirs(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for directory in (self.data_dir, self.run_dir):
            directory.mkdir(parents=True, exist_ok=True)
            if _running_as_root():
                user = _os_user()
                base = directory.parent
                if base != self.state_dir:  # relocated base: owned by the OS user too
                    os.chown(base, user.pw_uid, user.pw_gid)
                    base.chmod(0o700)
                os.chown(directory, user.pw_uid, user.pw_gid)
            directory.chmod(0o700)
        if _running_as_root() and not _can_traverse(self.run_dir, _os_user()):
            raise DevstackError(f"the {OS_USER!r} OS user cannot reach {self.run_dir}")

    def _initdb(self) -> None:
        if any(self.data_dir.iterdir()):
            raise DevstackError(f"{self.data_dir} is not empty but holds no PostgreSQL cluster")
        password = secrets.token_urlsafe(18)
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password + "\n")
        pwfile = self.run_dir / "initdb-password"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password + "\n")
        if _running_as_root():
            os.chown(pwfile, _os_user().pw_uid, _os_user().pw_gid)
        cmd = [
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            USER,
            f"--pwfile={pwfile}",
            "-A",
            "scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
        ]
        if self.fast:
            cmd.append("--no-sync")
        try:
            proc = self._run(cmd, as_os_user=True)
        finally:
            pwfile.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise DevstackError(
                f"initdb failed (exit {proc.returncode}):\n" + "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            )
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\n# Added by pipeline.devstack.postgres; rewritten on every start.\n")
            conf.write("include_if_exists = 'pipeline.conf'\n")

    def _write_conf(self) -> None:
        def quote(value: Path | str) -> str:
            return "'" + str(value).replace("'", "''") + "'"

        lines = [
            f"listen_addresses = {quote(HOST)}",
            f"port = {self.port}",
            f"unix_socket_directories = {quote(self.run_dir)}",
            "max_connections = 200",
        ]
        if self.fast:
            lines += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        conf = self.data_dir / "pipeline.conf"
        conf.write_text("".join(f"{line}\n" for line in ["# Generated on every start.", *lines]))
        if _running_as_root():
            os.chown(conf, _os_user().pw_uid, _os_user().pw_gid)

    def _client_env(self) -> dict[str, str]:
        return {"PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "5"}

    def _wait_accepting(self, deadline: float, timeout: float) -> None:
        isready = [str(self.bin_dir / "pg_isready"), "-q", "-h", HOST, "-p", str(self.port)]
        isready += ["-U", USER, "-d", "postgres", "-t", "2"]
        while True:
            if self._run(isready).returncode == 0:
                return
            if not self.is_running():
                raise DevstackError(
                    f"PostgreSQL exited during startup; last lines of {self.log_file}:\n" + log_tail(self.log_file)
                )
            if time.monotonic() >= deadline:
                raise DevstackError(
                    f"PostgreSQL on {HOST}:{self.port} did not accept connections within {timeout:.0f}s; "
                    f"last lines of {self.log_file}:\n{log_tail(self.log_file)}"
                )
            time.sleep(0.1)  # poll interval

    def _ensure_database(self) -> None:
        psql = [str(self.bin_dir / "psql"), "-X", "-q", "-h", HOST, "-p", str(self.port), "-U", USER]
        query = f"select 1 from pg_database where datname = '{DATABASE}'"
        found = self._run([*psql, "-d", "postgres", "-tAc", query], env=self._client_env())
        if found.returncode != 0:
            raise DevstackError(f"cannot log in to PostgreSQL as {USER!r}: {found.stderr.strip()}")
        if found.stdout.strip() == "1":
            return
        created = self._run(
            [str(self.bin_dir / "createdb"), "-h", HOST, "-p", str(self.port), "-U", USER, DATABASE],
            env=self._client_env(),
        )
        if created.returncode != 0:
            raise DevstackError(f"createdb {DATABASE} failed: {created.stderr.strip()}")

    def _cleanup_failed_start(self) -> None:
        pid = self.pid
        if pid is not None:
            terminate_pid(pid, 10.0)


# --------------------------------------------------------------------------------------------------
# Daemon mode (pipeline devstack postgres up|down|status)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostgresStatus:
    running: bool
    state_dir: Path
    pid: int | None = None
    port: int | None = None
    dsn: str | None = None
    data_dir: Path | None = None
    log_file: Path | None = None


def default_postgres_state_dir() -> Path:
    return state_root() / "postgres"


def _daemon_server(state_dir: Path, port: int | None) -> PostgresServer:
    return PostgresServer(data_dir=state_dir / "data", port=port)


def postgres_status(state_dir: Path | None = None) -> PostgresStatus:
    """Whether the daemon recorded in ``state_dir`` (default: the daemon state dir) is running."""
    state_dir = Path(state_dir or default_postgres_state_dir()).expanduser().absolute()
    info = read_json(state_dir / _STATE_FILE)
    port = int(info["port"]) if info is not None and "port" in info else DEFAULT_POSTGRES_PORT
    server = _daemon_server(state_dir, port)
    pid = server.pid
    if pid is None:
        return PostgresStatus(running=False, state_dir=state_dir, data_dir=server.data_dir)
    return PostgresStatus(
        running=True,
        state_dir=state_dir,
        pid=pid,
        port=port,
        dsn=server.dsn,
        data_dir=server.data_dir,
        log_file=server.log_file,
    )


def postgres_up(
    *, state_dir: Path | None = None, port: int = DEFAULT_POSTGRES_PORT, timeout: float = 60.0
) -> tuple[PostgresStatus, bool]:
    """Start a detached server unless one is already running; return (status, started_now)."""
    state_dir = Path(state_dir or default_postgres_state_dir()).expanduser().absolute()
    state_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(state_dir / ".lock"):
        status = postgres_status(state_dir)
        if status.running:
            return status, False
        server = _daemon_server(state_dir, port)
        server.start(timeout, detach=True)
        write_json_atomic(
            state_dir / _STATE_FILE,
            {"port": server.port, "pid": server.pid, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
            mode=0o600,
        )
        return postgres_status(state_dir), True


def postgres_down(state_dir: Path | None = None, timeout: float = 30.0) -> PostgresStatus:
    """Stop the daemon recorded in ``state_dir``; return its status from before the stop."""
    state_dir = Path(state_dir or default_postgres_state_dir()).expanduser().absolute()
    if not state_dir.is_dir():
        return PostgresStatus(running=False, state_dir=state_dir)
    with file_lock(state_dir / ".lock"):
        status = postgres_status(state_dir)
        if status.running and status.port is not None:
            server = _daemon_server(state_dir, status.port)
            server.stop(timeout)
            if server.is_running():
                raise DevstackError(f"PostgreSQL (pid {status.pid}) did not exit")
        with contextlib.suppress(FileNotFoundError):
            (state_dir / _STATE_FILE).unlink()
        return status


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------


def make_reachable_tempdir(prefix: str = "pipeline-pg-") -> Path:
    """A new temp dir that the ``postgres`` OS user can traverse when we run as root."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if _running_as_root():
        path.chmod(0o755)
    return path


@contextlib.contextmanager
def postgres_for_tests(*, timeout: float = 60.0) -> Iterator[str]:
    """Yield a DSN for a test session: ``$POSTGRES_DSN``, else a fresh fast server, destroyed afterwards."""
    external = os.environ.get("POSTGRES_DSN")
    if external:
        yield external
        return
    base = make_reachable_tempdir()
    server = PostgresServer(data_dir=base / "data", fast=True)
    try:
        yield server.start(timeout)
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)
