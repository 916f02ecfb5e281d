"""The benchmark's report: ratios to the baselines, the issue's targets, rendering, the JSON files and the
profile summary. No timing is asserted: the numbers here are made up."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench.profile import parse, summarise
from bench.report import (
    BARE,
    NAIVE,
    NO_RELIABILITY,
    PIPELINE,
    Drain,
    Latency,
    Results,
    Rss1M,
    Scaleout,
    Targets,
    checks,
    latency_percentiles,
    median_latency,
    per_second,
    percentile,
    ratios,
    render,
    save,
)


def drain(name: str, seconds: float, **fields: object) -> Drain:
    d = Drain(contender=name, events=1000, unique=700, rows=700, drain_s=seconds, startup_s=2.0, cpu_s=1.5)
    for key, value in fields.items():
        setattr(d, key, value)
    return d


def healthy(pipeline_s: float = 1.0) -> Results:
    pipe = drain(PIPELINE, pipeline_s, by_hash_records=1000, sink_records=700, rereads=0)
    no_rel = drain(NO_RELIABILITY, pipeline_s * 0.97)
    return Results(
        reliability_pairs=[(pipe.rate, no_rel.rate)],
        meta={"events": 1000, "duplicate_share": 0.3, "partitions": 6, "cpus": 2},
        drains={
            PIPELINE: pipe,
            BARE: drain(BARE, 0.2),
            NAIVE: drain(NAIVE, 10.0),
            NO_RELIABILITY: no_rel,
        },
        latency_runs=[
            Latency(
                offered_rate=500,
                seconds=30,
                sent=15000,
                unique=10500,
                duplicate_share=0.3,
                rows=10500,
                percentiles_ms={"p50": 40, "p99": 200},
            )
        ],
        rss_1m=Rss1M(
            entries=1_000_000, fill="test", drain=drain("rss", 1.0, peak_rss_mb=350.0), seeded_duplicates_dropped=True
        ),
    )


def by_name(results: Results) -> dict[str, bool]:
    return {c.name: c.ok for c in checks(results, Targets())}


def test_rates_and_ratios_to_both_baselines() -> None:
    results = healthy()
    assert results.drains[PIPELINE].rate == 1000.0
    assert results.drains[PIPELINE].cpu_s_per_1k == 1.5
    r = ratios(results)
    assert r["pipeline_vs_bare"] == pytest.approx(0.2)
    assert r["pipeline_vs_naive"] == pytest.approx(10.0)
    assert r["reliability_cost"] == pytest.approx(0.03)


def test_a_healthy_run_meets_every_target_but_the_bare_loop_ratio() -> None:
    result = by_name(healthy())
    assert result.pop("drain pipeline_vs_bare") is False  # 0.2 < 0.25
    assert all(result.values()), result


def test_each_target_fails_on_its_own() -> None:
    cases: dict[str, Callable[[Results], object]] = {
        "partition re-reads": lambda r: setattr(r.drains[PIPELINE], "rereads", 3),
        "by-hash records": lambda r: setattr(r.drains[PIPELINE], "by_hash_records", 1004),
        "sink records": lambda r: setattr(r.drains[PIPELINE], "sink_records", 701),
        "naive-faust rows": lambda r: setattr(r.drains[NAIVE], "rows", 699),
        "drain pipeline_vs_naive": lambda r: setattr(r.drains[NAIVE], "drain_s", 4.0),
        "breakers+tiers cost": lambda r: setattr(r, "reliability_pairs", [(900.0, 1000.0)]),
        "p99 latency at half max rate": lambda r: setattr(r.latency, "percentiles_ms", {"p50": 40, "p99": 251}),
        "latency rows": lambda r: setattr(r.latency, "rows", 10499),
        "RSS with 1,000,000 hashes": lambda r: setattr(r.rss_1m, "seeded_duplicates_dropped", False),
    }
    for name, spoil in cases.items():
        results = healthy()
        spoil(results)
        assert by_name(results)[name] is False, name


def test_a_failed_part_is_a_failed_check_and_a_part_not_run_is_not_checked() -> None:
    results = healthy()
    results.drains[BARE].error = "TimeoutError: 10 of 700 rows"
    results.latency_runs = []
    results.rss_1m = None
    del results.drains[NO_RELIABILITY]
    result = by_name(results)
    assert result["bare-loop drained"] is False
    assert result["drain pipeline_vs_bare"] is False  # no rate to compare with
    assert not any(name.startswith(("p99", "RSS", "breakers")) for name in result)


def test_percentiles_are_nearest_rank() -> None:
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert percentile(values, 0.5) == 0.05
    assert percentile(values, 0.99) == 0.099
    assert latency_percentiles(values) == pytest.approx(
        {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 100.0, "max": 100.0}
    )
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_render_shows_every_contender_ratio_and_target() -> None:
    text = render(healthy(), Targets())
    for needle in (
        PIPELINE,
        BARE,
        NAIVE,
        NO_RELIABILITY,
        "1,000",
        "pipeline_vs_naive 10.000",
        "[MISS] drain",
        "p99 200 ms",
    ):
        assert needle in text, needle


def test_save_writes_the_timestamped_file_and_latest(tmp_path: Path) -> None:
    path = save(healthy(), Targets(), tmp_path, now=datetime(2026, 12, 1, 10, 0, tzinfo=UTC))
    assert path.name == "20261201T100000Z.json"
    data = json.loads((tmp_path / "latest.json").read_text())
    assert data == json.loads(path.read_text())
    assert data["drains"][PIPELINE]["rate"] == 1000.0
    assert data["ratios"]["pipeline_vs_naive"] == pytest.approx(10.0)
    assert {c["name"] for c in data["checks"]} >= {"partition re-reads", "breakers+tiers cost"}


def scaled(two_s: float = 0.6, three_s: float = 0.5, **three: object) -> Scaleout:
    """1, 2 and 3 workers draining 1,000 events (700 unique) in 1.0, two_s and three_s seconds."""
    drains = {1: drain("pipelinex1", 1.0, by_hash_records=1000, sink_records=700, rereads=0, assignments=1)}
    drains[2] = drain("pipelinex2", two_s, by_hash_records=1000, sink_records=700, rereads=0, assignments=2)
    drains[3] = drain("pipelinex3", three_s, by_hash_records=1012, sink_records=705, rereads=1, assignments=5, **three)
    return Scaleout(partitions=6, drains=drains)


def test_scaleout_ratios_are_to_the_one_worker_drain_of_the_same_run() -> None:
    scale = scaled()
    assert scale.ratios() == pytest.approx({1: 1.0, 2: 1 / 0.6, 3: 2.0})
    assert scale.redone(1) == 0
    assert scale.redone(3) == 12 + 5
    assert [scale.rebalances(n) for n in (1, 2, 3)] == [0, 0, 2]
    without_base = Scaleout(partitions=6, drains={2: scale.drains[2]})
    assert without_base.ratios() == {2: None}
    failed = scaled(error="TimeoutError: late")
    assert failed.ratios()[3] is None
    assert Scaleout(partitions=6, drains={1: drain("x", 1.0)}).redone(1) is None


def test_scaleout_checks_rows_and_reports_the_ratios_without_a_target() -> None:
    results = Results(meta={"cpus": 2}, scaleout=scaled(two_s=2.0))
    found = {c.name: c for c in checks(results, Targets())}
    assert found["scale-out 3 workers rows"].ok
    assert found["scale-out 2 workers drain vs 1 worker"].target == "reported"
    assert found["scale-out 2 workers drain vs 1 worker"].ok  # slower with two: reported, not a miss
    assert found["scale-out 2 workers drain vs 1 worker"].value == "0.50x"
    short = Results(scaleout=scaled(rows=699))
    assert not by_name(short)["scale-out 3 workers rows"]
    failed = by_name(Results(scaleout=scaled(error="RuntimeError: exited")))
    assert not failed["scale-out 3 workers drained"]
    assert "scale-out 3 workers drain vs 1 worker" not in failed


def test_render_and_json_show_the_partitions_rates_ratios_and_the_cpu_caveat(tmp_path: Path) -> None:
    results = Results(meta={"events": 1000, "partitions": 6, "cpus": 2}, scaleout=scaled())
    text = render(results, Targets())
    for needle in ("scale-out: one app, 6 partitions", "2.00x", "1.67x", "3 workers share 2 CPUs", "CPU-bound"):
        assert needle in text, needle
    assert "CPU-bound" not in render(Results(meta={**results.meta, "cpus": 4}, scaleout=scaled()), Targets())
    data = json.loads(save(results, Targets(), tmp_path).read_text())
    assert data["scaleout"]["partitions"] == 6
    assert data["scaleout"]["drains"]["3"]["ratio_to_1_worker"] == pytest.approx(2.0)
    assert data["scaleout"]["drains"]["3"]["redone"] == 17
    assert data["scaleout"]["drains"]["3"]["rebalances"] == 2
    assert data["scaleout"]["drains"]["2"]["rate"] == pytest.approx(1000 / 0.6)


def test_the_scaleout_part_needs_a_partition_per_worker() -> None:
    from bench.__main__ import parse_args

    assert parse_args(["--only", "scaleout"]).workers == [1, 2, 3]
    assert parse_args(["--only", "scaleout", "--workers", "3,1", "--partitions", "3"]).workers == [1, 3]
    for argv in (["--partitions", "2"], ["--workers", "2,3"], ["--workers", "a"]):
        with pytest.raises(SystemExit):
            parse_args(["--only", "scaleout", *argv])
    assert parse_args(["--only", "drain", "--partitions", "2"]).partitions == 2


def test_worker_logs_count_the_app_group_assignments_and_the_rereads(tmp_path: Path) -> None:
    from bench.measure import assignments, rereads

    log = tmp_path / "worker.log"
    lines = [
        {"event": "partitions assigned", "assigned": {"ingest": [0, 1]}},
        {"event": "delivery partitions assigned", "assigned": {"sink": [0]}},
        {"event": "partitions assigned", "assigned": {"ingest": [1]}},
        {"event": "commit stalled on a record never processed; reading the partition again from it"},
    ]
    log.write_text("\n".join(json.dumps(line) for line in lines) + "\nnot json: partitions assigned\n")
    assert assignments(log) == 2
    assert rereads(log) == 1
    assert assignments(tmp_path / "missing.log") == 0


def test_profile_summary_ranks_own_and_cumulative_time_below_the_loop_dispatch() -> None:
    raw = "\n".join(
        [
            "main (m.py:1);BaseEventLoop._run_once (asyncio/base_events.py:1);Handle._run (asyncio/events.py:1);"
            "ingest (agents/ingest.py:1);parse_event (pipeline/events.py:1) 6",
            "main (m.py:1);BaseEventLoop._run_once (asyncio/base_events.py:1);EpollSelector.select (selectors.py:1) 3",
            "main (m.py:1);BaseEventLoop._run_once (asyncio/base_events.py:1);Handle._run (asyncio/events.py:1);"
            "ingest (agents/ingest.py:1) 1",
            "not a stack line",
        ]
    )
    summary = summarise(parse(raw))
    assert summary["samples"] == 10
    assert summary["event_loop_share"] == 30.0
    assert summary["own"] == [
        ("parse_event (pipeline/events.py:1)", 60.0),
        ("EpollSelector.select (selectors.py:1)", 30.0),
        ("ingest (agents/ingest.py:1)", 10.0),
    ]
    cumulative = dict(summary["cumulative"])
    assert cumulative["ingest (agents/ingest.py:1)"] == 70.0
    assert "main (m.py:1)" not in cumulative


def test_a_remote_sink_scaleout_says_its_round_trip_and_settings_and_drops_the_cpu_caveat(tmp_path: Path) -> None:
    from bench.__main__ import parse_args

    args = parse_args(["--only", "scaleout", "--sink-rtt-ms", "200", "--worker-env", "DEDUPE_STANDBY_REPLICAS=1"])
    assert args.sink_rtt_ms == 200 and args.worker_env == {"DEDUPE_STANDBY_REPLICAS": "1"}
    with pytest.raises(SystemExit):
        parse_args(["--only", "scaleout", "--worker-env", "NOEQUALS"])
    scale = scaled()
    scale.sink_rtt_ms, scale.env = 200.0, {"DEDUPE_STANDBY_REPLICAS": "1"}
    results = Results(meta={"events": 1000, "partitions": 6, "cpus": 2}, scaleout=scale)
    text = render(results, Targets())
    assert "sink round trip 200 ms, DEDUPE_STANDBY_REPLICAS=1" in text
    assert "CPU-bound" not in text
    data = json.loads(save(results, Targets(), tmp_path).read_text())
    assert data["scaleout"]["sink_rtt_ms"] == 200.0
    assert data["scaleout"]["env"] == {"DEDUPE_STANDBY_REPLICAS": "1"}


def test_the_reliability_cost_is_of_the_pairs_when_drained_again() -> None:
    results = Results(drains={PIPELINE: drain(PIPELINE, 1.0), NO_RELIABILITY: drain(NO_RELIABILITY, 1.0)})
    results.reliability_pairs = [(1.0, 1.0)]
    assert ratios(results)["reliability_cost"] == pytest.approx(0.0)
    results.repeats = {PIPELINE: [1000.0, 900.0, 960.0], NO_RELIABILITY: [1000.0, 1100.0, 1000.0]}
    results.reliability_pairs = [(1000.0, 1000.0), (900.0, 1100.0), (960.0, 1000.0)]
    assert results.rate_of(PIPELINE) == 960.0
    assert ratios(results)["reliability_cost"] == pytest.approx(0.04)
    found = {c.name: c for c in checks(results, Targets())}["breakers+tiers cost"]
    assert found.ok and "median of 3 pairs drained back to back" in found.value
    results.reliability_pairs[1] = (None, 1100.0)  # a failed repeat fails the check
    assert not {c.name: c for c in checks(results, Targets())}["breakers+tiers cost"].ok
    results.reliability_pairs = [(None, 1000.0)]  # no complete pair: no cost, a failed check
    assert ratios(results)["reliability_cost"] is None
    assert not {c.name: c for c in checks(results, Targets())}["breakers+tiers cost"].ok


def test_a_saved_run_reads_back_for_the_plot(tmp_path: Path) -> None:
    from bench.plot import from_json

    results = healthy()
    results.drains[PIPELINE].timeline = [(1.0, 0), (2.0, 700)]
    results.latency_runs = [Latency(offered_rate=500.0, seconds=10.0, percentiles_ms={"p50": 10.0, "p99": 20.0})]
    back = from_json(json.loads(save(results, Targets(), tmp_path).read_text()))
    assert {n: d.rate for n, d in back.drains.items()} == {n: d.rate for n, d in results.drains.items()}
    assert back.drains[PIPELINE].timeline == [(1.0, 0), (2.0, 700)]
    assert back.latency == results.latency


def test_the_latency_target_is_checked_on_the_run_of_the_median_p99() -> None:
    def run(p99: float, error: str | None = None) -> Latency:
        return Latency(offered_rate=500, seconds=30, percentiles_ms={"p50": 40, "p99": p99}, error=error)

    fast, slow, middle = run(180), run(600), run(240)
    assert median_latency([fast, slow, middle]) is middle
    failed = run(90, error="RuntimeError: worker exited")
    assert median_latency([run(100), failed]) is failed  # a failed run counts as the slowest
    assert median_latency([]) is None
    results = healthy()
    results.latency_runs = [fast, slow, middle]
    assert results.latency is middle
    check = next(c for c in checks(results, Targets()) if c.name == "p99 latency at half max rate")
    assert check.ok and check.value == "240 ms (median of 3 runs)"
    text = render(results, Targets())
    assert "each run's p99: 180 ms, 600 ms, 240 ms" in text
    results.latency_runs = [fast, slow, run(251)]
    assert by_name(results)["p99 latency at half max rate"] is False


def test_a_latency_run_is_reported_per_second_of_publish_time() -> None:
    # Second 0: 100 events at 0.1 s; second 1: 99 at 0.1 s and one at 2 s (its p99 is 0.1: nearest rank 99);
    # second 3 (none in 2): 100 events at 1 s, a slow spell.
    samples = [(1000.2, 0.1)] * 100 + [(1001.5, 0.1)] * 99 + [(1001.9, 2.0)] + [(1003.0, 1.0)] * 100
    seconds = per_second(samples)
    assert [(s["second"], s["events"], s["p99"], s["max"]) for s in seconds] == [
        (0, 100, 100.0, 100.0),
        (1, 100, 100.0, 2000.0),
        (3, 100, 1000.0, 1000.0),
    ]
    assert per_second([]) == []
    results = healthy()
    assert results.latency is not None
    results.latency.seconds_ms = seconds
    text = render(results, Targets())
    assert "per second: 1 of 3 seconds with p99 over 250 ms; the slowest, +3 s: p99 1,000 ms, max 1,000 ms" in text
    results.latency_runs = [results.latency, Latency(offered_rate=500, seconds=30, percentiles_ms={"p99": 90})]
    assert "(1 s over)" in render(results, Targets())


def test_the_pipelines_ratios_are_of_the_median_of_its_drains() -> None:
    results = healthy()
    results.repeats = {PIPELINE: [1000.0, 500.0, 800.0], NO_RELIABILITY: [900.0, 820.0, None]}
    results.reliability_pairs = [(500.0, 900.0), (800.0, 820.0), (1000.0, None)]
    r = ratios(results)
    assert r["pipeline_vs_bare"] == pytest.approx(800.0 / 5000.0)
    assert r["pipeline_vs_naive"] == pytest.approx(8.0)
    assert r["reliability_cost"] == pytest.approx(1 - (500.0 / 900.0 + 800.0 / 820.0) / 2)


def test_the_hosts_stolen_cpu_is_read_from_proc_stat_and_shown_beside_each_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    import bench.procs
    from bench.procs import Steal, stolen_cpu_seconds

    ticks = os.sysconf("SC_CLK_TCK")
    stat = f"cpu  100 0 50 9000 10 0 5 {3 * ticks} 0 0\ncpu0 50 0 25 4500 5 0 2 {ticks} 0 0\n"
    assert stolen_cpu_seconds(stat) == 3.0  # the first line: all CPUs together
    assert stolen_cpu_seconds("cpu  1 2 3 4\n") is None  # a kernel without the steal column
    assert stolen_cpu_seconds("intr 1 2 3 4 5 6 7 8 9\n") is None
    readings: Iterator[float | None] = iter([10.0, 11.5])
    clock = iter([100.0, 102.0])
    monkeypatch.setattr(bench.procs, "stolen_cpu_seconds", lambda: next(readings))
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    assert Steal().cores() == 0.75  # 1.5 CPU seconds stolen in 2 s of wall time
    readings, clock = iter([None, 11.5]), iter([0.0, 1.0])
    assert Steal().cores() is None  # not reported: no figure, not zero
    monkeypatch.undo()
    results = healthy()
    results.drains[PIPELINE].steal_cores = 0.42
    results.latency_runs = [
        Latency(offered_rate=500, seconds=30, percentiles_ms={"p99": p99}, steal_cores=steal)
        for p99, steal in ((180, 0.0), (600, 0.61), (240, 0.05))
    ]
    text = render(results, Targets())
    assert "host steal 0.05 cores" in text  # the median run's
    assert "each run's p99: 180 ms (steal 0.00), 600 ms (steal 0.61), 240 ms (steal 0.05)" in text
    pipeline_row = next(line for line in text.splitlines() if line.startswith(f"{PIPELINE} "))
    assert " 0.42 " in pipeline_row


def test_bench_workers_run_as_deployed_with_the_runs_settings_and_a_web_port_each(tmp_path: Path) -> None:
    from bench.runs import Run, pipeline_worker
    from bench.stack import Stack
    from pipeline.config import load_settings

    run = Run(Stack("127.0.0.1:9", "postgresql://u@127.0.0.1:9/db"), tmp_path, worker_env={"INGEST_BATCH_SIZE": "7"})
    lane = run.lane("latency")
    first, second = (pipeline_worker(run, lane, f"worker-{n}") for n in range(2))
    settings = load_settings(environ=first.env)
    assert settings.web_enabled and settings.web_host == "127.0.0.1"  # the metrics collector runs, as in production
    assert settings.ingest_batch_size == 7  # --worker-env reaches every worker of every part
    assert first.env["WEB_PORT"] != second.env["WEB_PORT"]
    assert pipeline_worker(run, lane, WEB_PORT="1234").env["WEB_PORT"] == "1234"


def test_the_reliability_cost_is_the_median_of_pairs_drained_back_to_back(tmp_path: Path) -> None:
    """The host drifts over minutes: pairs each drained back to back are compared with each other. Here the
    ratio of the medians would say 12.5%, each pair says 0-2%."""
    results = healthy()
    results.repeats = {PIPELINE: [1000.0, 700.0, 700.0], NO_RELIABILITY: [800.0, 714.0, 1000.0]}
    results.reliability_pairs = [(700.0, 714.0), (1000.0, 1000.0), (700.0, 700.0)]
    assert ratios(results)["reliability_cost"] == pytest.approx(0.0)
    found = {c.name: c for c in checks(results, Targets())}["breakers+tiers cost"]
    assert found.ok and "median of 3 pairs drained back to back" in found.value
    text = render(results, Targets())
    assert "reliability pairs, ev/s with / without breakers and tiers (cost): 700 / 714 (+2.0%)" in text
    assert json.loads(save(results, Targets(), tmp_path).read_text())["reliability_pairs"][0] == [700.0, 714.0]
    results.reliability_pairs[1] = (None, 1000.0)  # a failed drain fails the check
    assert not {c.name: c for c in checks(results, Targets())}["breakers+tiers cost"].ok
