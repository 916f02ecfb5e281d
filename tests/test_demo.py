"""`pipeline demo` (the README's first command) end to end: devstack Kafka and PostgreSQL in a state directory
of the test's own on free ports (the demo reuses what is running there and leaves it running), a worker,
the demo batch, and the report of what landed; then once more after `devstack kafka down --wipe`, when the
worker's local dedupe store would be ahead of the new, empty changelog."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from pipeline.devstack.kafka import free_port
from tests.support import run_cli

EVENTS, DUPLICATES = 200, 40


def cli(state_dir: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    # The demo finds its broker and database in the state directory; rich wraps its report at 80 columns.
    return run_cli(*args, env={"PIPELINE_STATE_DIR": str(state_dir), "COLUMNS": "250"}, timeout=timeout)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def demo_lands_everything(state_dir: Path) -> None:
    out = ok(cli(state_dir, "demo", "--events", str(EVENTS), "--duplicates", str(DUPLICATES), timeout=300))
    assert f"landed {EVENTS} rows" in out, out
    assert f"duplicates dropped: {DUPLICATES}" in out, out
    malformed = re.search(r"(\d+) malformed lines in topic", out)
    assert malformed is not None and int(malformed.group(1)) == 3, out


def test_demo_lands_every_unique_event_and_runs_again_after_a_broker_wipe(state_dir: Path) -> None:
    try:
        ok(cli(state_dir, "devstack", "postgres", "up", "--port", str(free_port())))
        ok(cli(state_dir, "devstack", "kafka", "up", "--port", str(free_port())))
        demo_lands_everything(state_dir)
        assert (state_dir / "demo" / "data").is_dir(), "the worker kept no local store"

        ok(cli(state_dir, "devstack", "kafka", "down", "--wipe"))
        ok(cli(state_dir, "devstack", "kafka", "up", "--port", str(free_port())))
        demo_lands_everything(state_dir)
    finally:
        cli(state_dir, "devstack", "kafka", "down")
        cli(state_dir, "devstack", "postgres", "down")
