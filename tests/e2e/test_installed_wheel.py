"""The package as a user gets it: the built wheel installed into a fresh virtualenv, run from an empty
directory with only documented env variables (no TOPICS_FILE, no repo on the path). `topics apply`,
`worker` and `publish` must work and the events must land in PostgreSQL.

The wheel is the one the container image installs: built with `pip wheel` from the Docker build context
(the repo filtered by .dockerignore, tests/docker_build.py), and the worker runs as in the image, with the
image's ENV and PIPELINE_DATA_DIR as the only place it writes (the image's root filesystem is read-only).

The virtualenv gets the wheel (without dependencies) and sees the dependencies through a .pth line naming
the project's site-packages: site does not process .pth files of a directory added that way, so the
editable install of the repo there stays inactive. The test checks that `pipeline` and `agents` are
imported from the temp virtualenv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docker_build import copy_context, parse_dockerfile
from tests.e2e.events_gen import event
from tests.support import count_rows, poll

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

EVENTS = 20


def _run(argv: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 180) -> str:
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv} exited {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding the wheel built from this checkout; returns its bin directory."""
    root = tmp_path_factory.mktemp("wheel")
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TOPICS_FILE", "PIPELINE_CONFIG")}
    # Build from a copy of what `docker build` sends (an in-tree build would also reuse build/lib, which can
    # hold files the checkout no longer has).
    source = copy_context(root / "src")
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"), str(source)],
        env=clean,
        cwd=root,
    )
    (wheel,) = (root / "dist").glob("pipeline-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert "pipeline/topics.yaml" in archive.namelist(), "the wheel must carry the topic catalog"
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], env=clean, cwd=root)
    python = venv / "bin" / "python"
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        env=clean,
        cwd=root,
    )
    purelib = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=clean, cwd=root
    )
    (Path(purelib.strip()) / "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def _check_imported_from(installed: Path, env: dict[str, str], cwd: Path) -> None:
    """`pipeline` and `agents` come from the temp virtualenv, not from the checkout."""
    code = "import agents, pipeline; print(pipeline.__file__); print(agents.__file__)"
    where = _run([str(installed / "python"), "-c", code], env=env, cwd=cwd)
    venv = installed.parent.resolve()
    for module_file in where.split():
        assert Path(module_file).resolve().is_relative_to(venv), f"imported from outside the temp venv: {where}"


def _start_worker(installed: Path, env: dict[str, str], cwd: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [str(installed / "pipeline"), "worker"], env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
        )


@pytest.fixture
def empty_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "empty"
    directory.mkdir()
    yield directory


async def test_installed_wheel_applies_topics_runs_the_worker_and_publishes(
    installed: Path, empty_dir: Path, tmp_path: Path, kafka_bootstrap: str, postgres_dsn: str, unique_id: str
) -> None:
    table = f"events_{unique_id}"
    home, data = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    env = {
        **parse_dockerfile().final.env(),  # as in the image: PYTHONDONTWRITEBYTECODE, LOG_FORMAT, ...
        "PATH": f"{installed}:/usr/bin:/bin",
        "HOME": str(home),
        "PIPELINE_DATA_DIR": str(data),  # the image's volume: the only place the worker may write
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "PIPELINE_APP_ID": f"t{unique_id}",
        "INGEST_TOPIC": f"t{unique_id}.events.ingest",
        "TOPIC_PREFIX": f"t{unique_id}.",
        "KAFKA_TOPIC_PARTITIONS": "2",
        "TSDB_DSN": postgres_dsn,
        "TSDB_TABLE": table,
        "TSDB_LINGER_MS": "100",
        "WEB_ENABLED": "false",
        "LOG_FORMAT": "json",
    }
    _check_imported_from(installed, env, empty_dir)
    applied = _run([str(installed / "pipeline"), "topics", "apply"], env=env, cwd=empty_dir)
    assert "created" in applied
    log_path = tmp_path / "worker.log"
    worker = _start_worker(installed, env, empty_dir, log_path)
    try:
        events = tmp_path / "events.jsonl"
        events.write_text("".join(json.dumps(event(n)) + "\n" for n in range(EVENTS)))
        _run([str(installed / "pipeline"), "publish", str(events)], env=env, cwd=empty_dir)

        async def rows() -> int:
            assert worker.poll() is None, "the worker exited:\n" + log_path.read_text(errors="replace")[-4000:]
            return await count_rows(postgres_dsn, table)

        await poll(rows, lambda n: n == EVENTS, timeout=120, what=f"{EVENTS} rows in {table}")
        assert list(data.iterdir()), "the RocksDB tables live in PIPELINE_DATA_DIR"
        written = [p for d in (empty_dir, home) for p in d.rglob("*")]
        assert not written, f"written outside PIPELINE_DATA_DIR (read-only in the image): {written}"
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
