"""Session-wide fixtures for the integration tests: one Kafka broker and one PostgreSQL per session.

The logic lives in :mod:`pipeline.devstack`; see ``kafka_for_tests`` / ``postgres_for_tests`` for the
order in which an external service (``KAFKA_BOOTSTRAP_SERVERS`` / ``POSTGRES_DSN``), Docker or a
local process is chosen.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import warnings
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.devstack.kafka import kafka_for_tests
from pipeline.devstack.postgres import make_reachable_tempdir, postgres_for_tests
from tests.leftovers import new_uid, remove_relations, remove_topics, session_uids


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of the session's Kafka (topics are not auto-created: create them)."""
    with kafka_for_tests(tmp_path_factory.mktemp("kafka")) as bootstrap:
        yield bootstrap
        if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):  # a broker this session does not own: leave it as found
            _tidy("topics", remove_topics(bootstrap, session_uids()))


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """DSN of the session's PostgreSQL database (superuser ``pipeline``)."""
    with postgres_for_tests() as dsn:
        yield dsn
        if os.environ.get("POSTGRES_DSN"):
            _tidy("tables, schemas and roles", remove_relations(dsn, session_uids()))


def _tidy(what: str, removal: Coroutine[Any, Any, list[str]]) -> None:
    """Run a removal of this session's leftovers; a failure is a warning, never a failed run."""
    try:
        asyncio.run(removal)
    except Exception as exc:
        warnings.warn(f"the tests' {what} were not removed from the external service: {exc!r}", stacklevel=1)


@pytest.fixture
def unique_id() -> str:
    """A short unique string for per-test topic prefixes, app ids and table names (removed from an
    external broker and database when the session ends: tests.leftovers)."""
    return new_uid()


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """An empty devstack state directory (``--state-dir`` / ``PIPELINE_STATE_DIR``) that PostgreSQL's
    unprivileged user can reach; removed afterwards."""
    base = make_reachable_tempdir(prefix="pipeline-devstack-test-")
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)
