"""Session-wide fixtures for the integration tests: one Kafka broker and one PostgreSQL per session.

The logic lives in :mod:`pipeline.devstack`; see ``kafka_for_tests`` / ``postgres_for_tests`` for the
order in which an external service (``KAFKA_BOOTSTRAP_SERVERS`` / ``POSTGRES_DSN``), Docker or a
local process is chosen.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.devstack.kafka import kafka_for_tests
from pipeline.devstack.postgres import make_reachable_tempdir, postgres_for_tests


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of the session's Kafka (topics are not auto-created: create them)."""
    with kafka_for_tests(tmp_path_factory.mktemp("kafka")) as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """DSN of the session's PostgreSQL database (superuser ``pipeline``)."""
    with postgres_for_tests() as dsn:
        yield dsn


@pytest.fixture
def unique_id() -> str:
    """A short unique string for per-test topic prefixes, app ids and table names."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """An empty devstack state directory (``--state-dir`` / ``PIPELINE_STATE_DIR``) that PostgreSQL's
    unprivileged user can reach; removed afterwards."""
    base = make_reachable_tempdir(prefix="pipeline-devstack-test-")
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)
