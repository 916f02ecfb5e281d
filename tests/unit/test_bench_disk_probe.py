"""The benchmark's probe of the database's disk (bench.disk_probe) and how the report shows it. No timing is
asserted: the durations here are made up, and the live probe is only checked to sync and clean up."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from bench.disk_probe import SyncProbe, summarise
from bench.plot import from_json
from bench.report import Latency, Targets, render, window_start
from tests.unit.test_bench_report import healthy


def test_the_probe_syncs_in_its_directory_until_stopped_and_leaves_no_file(tmp_path: Path) -> None:
    probe = SyncProbe(tmp_path / "pgdata", every_s=0.001).start()
    deadline = time.monotonic() + 10
    while probe.syncs < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    seen = probe.stop()
    assert seen.syncs >= 3 and seen.directory == str(tmp_path / "pgdata")
    assert 0 <= seen.p50_ms <= seen.p99_ms <= seen.max_ms
    assert all(ms > 100 for _, ms in seen.stalls)
    assert list((tmp_path / "pgdata").iterdir()) == []  # its file is gone
    assert probe.stop().syncs == seen.syncs  # stopping twice is harmless, and it syncs no more


def test_stalls_are_the_syncs_over_100_ms_placed_in_the_measured_window() -> None:
    durations = [(1000.2, 2.0), (1001.0, 3.0), (1025.4, 664.0), (1026.0, 120.5), (1027.0, 100.0), (1028.0, 4.0)]
    seen = summarise("/pg", durations)
    assert (seen.syncs, seen.p50_ms, seen.max_ms) == (6, 4.0, 664.0)
    assert seen.stalls == [(1025.4, 664.0), (1026.0, 120.5)]  # 100 ms itself is not a stall
    assert seen.relative_to(1000.0).stalls == [(25.4, 664.0), (26.0, 120.5)]
    assert summarise("/pg", []).syncs == 0
    assert window_start([(1000.7, 0.1), (1003.2, 0.2)]) == 1000.0  # per_second's first second
    assert window_start([]) == 0.0


def test_the_report_shows_the_disk_beside_each_latency_run_and_the_json_keeps_it(tmp_path: Path) -> None:
    results = healthy()
    stalled = summarise("/pg", [(1000.0, 3.0), (1025.4, 664.0), (1026.0, 120.5), (1027.0, 2.0)])
    calm = summarise("/pg", [(1000.0, 3.0), (1001.0, 4.0)])
    results.latency_runs = [
        Latency(offered_rate=500, seconds=30, percentiles_ms={"p99": p99}, disk_sync=asdict(sync.relative_to(1000.0)))
        for p99, sync in ((180, calm), (240, stalled), (600, calm))
    ]
    text = render(results, Targets())
    assert results.latency is results.latency_runs[1]  # the median run's line
    assert "disk sync p50 3 ms, p99 664 ms, max 664 ms (2 of 4 over 100 ms)" in text
    assert "disk sync stalls: 664 ms at +25.4 s, 120 ms at +26.0 s" in text
    assert "180 ms (disk sync max 4 ms), 240 ms (disk sync max 664 ms), 600 ms (disk sync max 4 ms)" in text
    saved = json.loads(json.dumps(asdict(results.latency)))
    assert from_json({"latency_runs": [saved]}).latency_runs[0].disk_sync["stalls"] == [[25.4, 664.0], [26.0, 120.5]]
