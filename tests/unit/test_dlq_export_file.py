"""`pipeline dlq export --out` into a directory that does not exist says so in one line (it used to end in
a FileNotFoundError traceback), before it reads anything from Kafka."""

from __future__ import annotations

from pathlib import Path

from tests.support import run_cli


def test_export_to_a_missing_directory_is_a_one_line_error(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "x.jsonl"
    env = {"PIPELINE_CONFIG": "", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}  # never reached
    result = run_cli("dlq", "export", "--sink", "tsdb", "--out", str(target), env=env, timeout=60)
    assert result.returncode == 1, result.stderr
    assert f"export: cannot write {target}: No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr
