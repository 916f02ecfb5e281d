"""A worker whose WEB_PORT is taken stops before it joins any group (it used to take partitions, force a
rebalance on the other workers, then die with a traceback)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from pipeline.web.server import bind_problem
from tests.support import run_cli


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_a_taken_port_is_named_and_a_free_one_is_not(taken_port: int) -> None:
    problem = bind_problem("127.0.0.1", taken_port)
    assert problem is not None and f"WEB_PORT) {taken_port} on 127.0.0.1 is not free" in problem
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        free = spare.getsockname()[1]
    assert bind_problem("127.0.0.1", free) is None
    assert "does not resolve" in (bind_problem("no-such-host.invalid", free) or "")


def test_the_worker_refuses_a_taken_web_port_before_it_reaches_kafka(taken_port: int) -> None:
    env = {
        "PIPELINE_CONFIG": "",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
        "TSDB_DSN": "postgresql://u@127.0.0.1:9/db",
        "WEB_PORT": str(taken_port),
    }
    result = run_cli("worker", env=env, timeout=60)
    assert result.returncode == 78, result.stdout + result.stderr
    assert f"WEB_PORT) {taken_port}" in result.stderr and "Traceback" not in result.stderr
