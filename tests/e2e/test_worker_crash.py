"""A worker whose agent, timer or task dies exits non-zero, so that its supervisor (systemd, Kubernetes)
restarts it, instead of living on while consuming nothing. Each target crashes in its own worker
(tests/crash_worker.py replaces it with one that raises); the workers run side by side."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.events_gen import event
from tests.support import REPO, WorkerProcess, poll, produce, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

TARGETS = [
    ("agent", "ingest"),
    ("agent", "dedupe"),
    ("task", "expire_dedupe_entries"),  # the dedupe-expiry timer
    ("task", "commit_watchdog"),  # the watchdog's timer
    ("task", "verify_gaps"),  # the watchdog's task
]
EXIT_WITHIN_SEC = 60


async def test_a_dead_agent_or_task_takes_the_worker_down(stack: Stack) -> None:
    assert run_cli("topics", "apply", env=stack.env()).returncode == 0
    await produce(stack.bootstrap, stack.ingest_topic, [(p, None, json.dumps(event(p)).encode(), []) for p in range(4)])
    workers: dict[str, WorkerProcess] = {}
    started = time.monotonic()
    for n, (kind, target) in enumerate(TARGETS):
        env = stack.env(
            PIPELINE_APP_ID=f"{stack.app_id}-{n}",  # own group, own dedupe changelog (applied at start)
            PIPELINE_DATA_DIR=str(stack.workdir / target / "data"),
            PYTHONPATH=str(REPO),
        )
        worker = WorkerProcess(env, stack.workdir / target, name=target, module=("tests.crash_worker", kind, target))
        stack.workers.append(worker)
        workers[target] = worker.start()

    def exited() -> dict[str, int | None]:
        return {target: w.proc.poll() if w.proc else None for target, w in workers.items()}

    try:
        codes = await poll(
            lambda: asyncio.sleep(0, exited()),
            lambda c: all(code is not None for code in c.values()),
            timeout=EXIT_WITHIN_SEC,
            what="every worker with a dead agent or task to exit",
        )
    except AssertionError:
        alive = [t for t, code in exited().items() if code is None]
        raise AssertionError(f"still running with a dead agent or task: {alive}") from None
    assert time.monotonic() - started < EXIT_WITHIN_SEC
    for target, code in codes.items():
        assert code not in (None, 0), (target, code)
        assert "injected crash in" in workers[target].log_path.read_text(errors="replace"), target
