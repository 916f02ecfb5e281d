"""`python -m bench` (`make bench`): the drain benchmark.

    make bench                                   # every part with the issue's defaults (200,000 events)
    make bench ARGS="--events 20000"             # a smaller backlog
    make bench ARGS="--only drain,latency"       # some parts: drain, reliability, scaleout, latency, rss, profile
    make bench ARGS="--check"                    # exit 1 when a target is missed

Parts (each contender on its own topics, consumer groups and table; every stage has a timeout; every
pipeline worker runs with the product's defaults, and --worker-env NAME=VALUE gives them all a setting):
  drain        the pipeline worker, the bare loop and the naive Faust agent drain the same backlog
  reliability  the pipeline again with breakers and retry tiers off (TSDB_BREAKER_ENABLED=false,
               TSDB_MAX_RETRIES=0): what the machinery costs on the healthy path; --reliability-runs
               pairs (3), each drained back to back, the order alternating; the cost is 1 - the median
               of the pairs' ratios
  scaleout     1, 2 and 3 (--workers) pipeline workers of one app form their groups, then drain the same
               backlog: each drain rate and its ratio to the 1-worker drain (needs --partitions >= the most
               workers); --sink-rtt-ms adds a round trip before PostgreSQL (a remote database)
  latency      publish -> row at half the pipeline's drain rate (the median of its drains), in the backlog's
               mix (--duplicates of the events re-serialised copies of recent ones), after --latency-warmup
               seconds at that rate (not measured); --latency-runs runs, checked on the median p99
  rss          peak RSS of a worker whose dedupe table holds --dedupe-entries hashes
  profile      py-spy on a worker draining --profile-events (not in the default set)
Results: bench/results/<UTC time>.json, latest.json and bench.png. Exit status: 0, 1 (--check and a target
missed or a part failed), 130 (interrupted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from bench import runs
from bench.events import Backlog, make_backlog
from bench.plot import plot
from bench.procs import stop_all
from bench.report import (
    BARE,
    NAIVE,
    NO_RELIABILITY,
    PIPELINE,
    Results,
    Targets,
    checks,
    drained,
    render,
    save,
)
from bench.stack import REPO, cleanup, close_stack, open_stack

PARTS = ("drain", "reliability", "scaleout", "latency", "rss", "profile")
DEFAULT_PARTS = ("drain", "reliability", "latency", "rss")  # scaleout on request: three more drains
RESULTS = REPO / "bench" / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--events", type=int, default=200_000, help="backlog size, duplicates included (200000)")
    p.add_argument("--duplicates", type=float, default=0.3, help="share of duplicates in the backlog (0.3)")
    p.add_argument("--partitions", type=int, default=6, help="partitions of every topic (6, as topics.yaml)")
    p.add_argument("--only", default=",".join(DEFAULT_PARTS), help=f"comma-separated parts of {', '.join(PARTS)}")
    p.add_argument("--profile", action="store_true", help="add the profile part")
    p.add_argument("--workers", default="1,2,3", help="worker counts of the scaleout part (1,2,3)")
    p.add_argument(
        "--sink-rtt-ms",
        type=float,
        default=0.0,
        help="scaleout: reach PostgreSQL through a proxy adding this round trip, a remote database (0: none)",
    )
    p.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for every pipeline worker of every part, e.g. DEDUPE_STANDBY_REPLICAS=0 (repeatable)",
    )
    p.add_argument(
        "--reliability-runs",
        type=int,
        default=3,
        help="pairs of the reliability comparison, each drained back to back, alternating (3)",
    )
    p.add_argument("--latency-seconds", type=float, default=30.0, help="length of the offered load (30)")
    p.add_argument(
        "--latency-rate",
        type=float,
        help="offered events/s (default: half the pipeline's drain rate, the median of its drains)",
    )
    p.add_argument(
        "--latency-runs",
        type=int,
        default=3,
        help="latency runs, each with a new worker; the target is checked on the run of the median p99 (3)",
    )
    p.add_argument(
        "--latency-warmup",
        type=float,
        default=5.0,
        help="seconds offered at the same rate before the measured ones, which follow without a pause: a new "
        "worker's first load grows its heap (5)",
    )
    p.add_argument("--dedupe-entries", type=int, default=1_000_000, help="hashes in the table for rss (1000000)")
    p.add_argument("--rss-events", type=int, default=20_000, help="backlog drained with the full table (20000)")
    p.add_argument("--profile-events", type=int, default=50_000, help="backlog drained while profiling (50000)")
    p.add_argument("--profile-seconds", type=float, default=45.0, help="py-spy sampling time (45)")
    p.add_argument("--stage-timeout", type=float, help="seconds per stage (default: 180 + events/300)")
    p.add_argument("--results", type=Path, default=RESULTS, help="where results go (bench/results)")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--keep", action="store_true", help="keep the run's topics, tables and logs")
    args = p.parse_args(argv)
    parts = {part.strip() for part in args.only.split(",") if part.strip()}
    if args.profile:
        parts.add("profile")
    unknown = parts - set(PARTS)
    if unknown:
        p.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    args.parts = [part for part in PARTS if part in parts]
    try:
        args.workers = sorted({int(n) for n in args.workers.split(",") if n.strip()})
    except ValueError:
        p.error(f"--workers takes comma-separated counts, not {args.workers!r}")
    try:
        args.worker_env = dict(item.split("=", 1) for item in args.worker_env)
    except ValueError:
        p.error("--worker-env takes NAME=VALUE")
    if "scaleout" in args.parts:
        if not args.workers or args.workers[0] != 1:
            p.error("--workers must start at 1: the ratios are to the 1-worker drain")
        if args.partitions < args.workers[-1]:
            p.error(f"--partitions {args.partitions} < {args.workers[-1]} workers: a worker would sit idle")
    return args


def meta(args: argparse.Namespace, run: runs.Run) -> dict[str, object]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "events": args.events,
        "duplicate_share": args.duplicates,
        "partitions": args.partitions,
        "parts": args.parts,
        "scaleout_workers": args.workers if "scaleout" in args.parts else None,
        "worker_env": args.worker_env,
        "cpus": os.cpu_count(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "commit": commit,
        "run_id": run.run_id,
    }


def previous_rate(directory: Path) -> float | None:
    try:
        data = json.loads((directory / "latest.json").read_text())
        rate = data["drains"][PIPELINE]["rate"]
        return float(rate) if rate else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


async def reliability_pairs(run: runs.Run, results: Results, backlog: Backlog, pairs: int) -> None:
    """Drain the pipeline with and without breakers and tiers `pairs` times, the two of a pair back to back
    and the order alternating (ABBA: a drift of the host over the minutes cancels). One drain is noisier
    than the 5% it measures, and a drain a minute and two contenders away is not a fair comparison."""
    if PIPELINE in results.drains:
        results.repeats[PIPELINE] = [results.drains[PIPELINE].rate]
    for n in range(1, pairs + 1):
        rates: dict[str, float | None] = {}
        for name in (NO_RELIABILITY, PIPELINE) if n % 2 else (PIPELINE, NO_RELIABILITY):
            label = f"{name} (pair {n})"
            print(f"bench: draining {backlog.events:,} events with {label} ...", flush=True)
            overrides = runs.NO_RELIABILITY_ENV if name == NO_RELIABILITY else None
            d = await runs.drain(run, name, backlog, overrides, lane=f"{name}-pair{n}")
            results.drains.setdefault(name, d)
            results.repeats.setdefault(name, []).append(None if d.error else d.rate)
            rates[name] = None if d.error else d.rate
            drained(label, d)
        results.reliability_pairs.append((rates[PIPELINE], rates[NO_RELIABILITY]))


async def bench(args: argparse.Namespace, run: runs.Run, results: Results, stamp: str) -> None:
    parts = args.parts
    drains = {"drain", "reliability", "scaleout"} & set(parts)
    backlog = make_backlog(args.events, args.duplicates, args.partitions) if drains else None
    if backlog is not None and "drain" in parts:
        for name in (PIPELINE, BARE, NAIVE):
            print(f"bench: draining {backlog.events:,} events with {name} ...", flush=True)
            results.drains[name] = await runs.drain(run, name, backlog)
            drained(name, results.drains[name])
    if backlog is not None and "reliability" in parts:
        await reliability_pairs(run, results, backlog, max(1, args.reliability_runs))
    if backlog is not None and "scaleout" in parts:
        results.scaleout = await runs.scaleout(run, backlog, args.workers, sink_rtt_ms=args.sink_rtt_ms)
    if "latency" in parts:
        maximum = results.rate_of(PIPELINE) if PIPELINE in results.drains else None
        rate = args.latency_rate or (maximum / 2 if maximum else None)
        rate = rate or ((previous_rate(args.results) or 0) / 2) or None
        if rate is None:
            print("bench: latency skipped: no drain rate measured; give --latency-rate", flush=True)
        else:
            for n in range(1, max(1, args.latency_runs) + 1):
                print(
                    f"bench: latency at {rate:,.0f} events/s for {args.latency_seconds:.0f} s (run {n}) ...",
                    flush=True,
                )
                lat = await runs.latency(
                    run, rate, args.latency_seconds, warmup=args.latency_warmup, name=f"latency-{n}"
                )
                results.latency_runs.append(lat)
                print(f"bench:   p99 {lat.percentiles_ms.get('p99', float('nan')):,.0f} ms", flush=True)
    if "rss" in parts:
        print(f"bench: RSS with {args.dedupe_entries:,} hashes in the dedupe table ...", flush=True)
        results.rss_1m = await runs.rss_with_entries(run, args.dedupe_entries, args.rss_events)
    if "profile" in parts:
        print(
            f"bench: profiling a drain of {args.profile_events:,} events for {args.profile_seconds:.0f} s ...",
            flush=True,
        )
        results.profile = await runs.profile(run, args.profile_events, args.profile_seconds, args.results, stamp)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Produces right after a topic is created bounce off a leader not ready yet; aiokafka retries them and
    # logs each at WARNING, which only hides the benchmark's own output.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    signal.signal(signal.SIGTERM, _interrupt)
    stack = open_stack()
    workdir = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    run = runs.Run(
        stack, workdir, args.events, args.duplicates, args.partitions, args.stage_timeout, worker_env=args.worker_env
    )
    results = Results(meta=meta(args, run))
    targets = Targets()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    interrupted = False
    print(f"bench: run {run.run_id}, parts {', '.join(args.parts)}, logs in {workdir}", flush=True)
    try:
        asyncio.run(bench(args, run, results, stamp))
    except KeyboardInterrupt:
        interrupted = True
        print("bench: interrupted; stopping what it started", file=sys.stderr, flush=True)
    finally:
        stop_all()
        if not args.keep:
            try:
                asyncio.run(cleanup(stack, run.run_id))
            except Exception as exc:  # report, never hide the results
                print(f"bench: cleanup failed: {exc!r}", file=sys.stderr)
        close_stack(stack)
    if interrupted:
        return 130
    print()
    print(render(results, targets))
    path = save(results, targets, args.results)
    png = plot(results, args.results / "bench.png")
    print(
        f"\nbench: results in {path.relative_to(REPO) if path.is_relative_to(REPO) else path}"
        + (f", plot {png}" if png else "")
    )
    if args.check and not all(c.ok for c in checks(results, targets)):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
