"""Results, ratios to the baselines, the issue's targets and the text report. Pure: no I/O except
`save`, which writes the JSON files (the unit tests run the rest as it is)."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PIPELINE = "pipeline"
BARE = "bare-loop"
NAIVE = "naive-faust"
NO_RELIABILITY = "pipeline-no-breakers-tiers"
DISK_STALL_MS = 100.0  # a disk sync this slow (bench.disk_probe) holds a sink commit past a round's budget


@dataclass
class Drain:
    """One contender draining a backlog: timed from its first row to its last unique row."""

    contender: str
    events: int
    unique: int
    rows: int = 0
    startup_s: float | None = None  # process start -> first row
    drain_s: float | None = None  # first row -> last unique row
    cpu_s: float | None = None  # CPU seconds of the process (not the broker's or PostgreSQL's) during the drain
    cpu_total_s: float | None = None  # ... from its start to its last row (imports, start-up, recovery included)
    peak_rss_mb: float | None = None  # VmHWM of the process
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (seconds since process start, rows)
    by_hash_records: int | None = None  # pipeline only: records on the by-hash topic ...
    sink_records: int | None = None  # ... and on the sink topic
    rereads: int | None = None  # pipeline only: partitions read again by the commit watchdog
    assignments: int | None = None  # pipeline only: assignments of the app's group, summed over its workers
    commits_settled: bool | None = None  # the agents' commits reached the topics' ends after the drain
    steal_cores: float | None = None  # CPU the hypervisor took from the host meanwhile, in cores (bench.procs)
    error: str | None = None

    @property
    def rate(self) -> float | None:
        """Input events (duplicates included) per second of drain."""
        if self.error or not self.drain_s or self.drain_s <= 0:
            return None
        return self.events / self.drain_s

    @property
    def cpu_s_per_1k(self) -> float | None:
        return None if self.cpu_s is None else self.cpu_s / self.events * 1000


@dataclass
class Latency:
    """Publish (payload.sent_at_ms) to the row's insert time (the database's clock) at a fixed offered rate."""

    offered_rate: float
    seconds: float
    warmup_seconds: float = 0.0  # offered at the same rate just before, not measured
    sent: int = 0  # messages offered in the measured seconds, duplicates included
    unique: int = 0  # of those, new events (each should make one row)
    duplicate_share: float = 0.0  # the backlog's mix: this share of the messages are re-serialised duplicates
    rows: int = 0
    percentiles_ms: dict[str, float] = field(default_factory=dict)  # "p50", "p90", "p99", "p99.9", "max"
    hops_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # bench.hops: ingest, dedupe, delivery
    cpu_s_per_1000: float | None = None  # the worker's CPU seconds per 1,000 events offered, warm-up included
    steal_cores: float | None = None  # CPU the hypervisor took from the host meanwhile, in cores (bench.procs)
    # Per second of publish time (`per_second`): a miss from a slow spell shows as a few bad seconds, a
    # worker that cannot keep up as a tail that grows second by second.
    seconds_ms: list[dict[str, float]] = field(default_factory=list)
    # bench.disk_probe.SyncStalls of the database's disk meanwhile (a 4 KiB fdatasync every 50 ms): a commit
    # that waits on a stalled disk shows here, as the hypervisor's steal does above.
    disk_sync: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Rss1M:
    """A worker whose dedupe table holds `entries` hashes, draining a small backlog."""

    entries: int
    fill: str  # how the table was filled
    drain: Drain | None = None
    seeded_duplicates_dropped: bool | None = None  # events whose hashes were seeded made no row
    error: str | None = None


@dataclass
class Scaleout:
    """The same backlog drained by 1, 2, 3 ... `pipeline worker` processes of one app, started together:
    `drains[n]` is the n-worker lane (CPU seconds summed over its workers, peak RSS their largest)."""

    partitions: int
    sink_rtt_ms: float = 0.0  # 0: PostgreSQL on this host; else reached through a proxy adding this round trip
    env: dict[str, str] = field(default_factory=dict)  # settings given to every worker of the part
    drains: dict[int, Drain] = field(default_factory=dict)

    def ratios(self) -> dict[int, float | None]:
        """Each lane's drain rate over the 1-worker lane's in the same run."""
        base = self.drains.get(1)
        return {n: _ratio(d.rate, base.rate if base else None) for n, d in self.drains.items()}

    def redone(self, workers: int) -> int | None:
        """Work done more than once: by-hash records beyond the events plus sink records beyond the unique."""
        d = self.drains[workers]
        if d.by_hash_records is None or d.sink_records is None:
            return None
        return d.by_hash_records - d.events + d.sink_records - d.unique

    def rebalances(self, workers: int) -> int | None:
        """Assignments beyond each worker's first: the rebalances the lane's workers went through."""
        d = self.drains[workers]
        return None if d.assignments is None else d.assignments - workers


@dataclass
class Targets:
    """The issue's targets (one worker process on a 2-core machine)."""

    drain_vs_bare: float = 0.25
    drain_vs_naive: float = 5.0
    p99_ms: float = 250.0
    rss_1m_mb: float = 400.0
    reliability_cost: float = 0.05


@dataclass
class Check:
    name: str
    target: str
    value: str
    ok: bool


@dataclass
class Results:
    meta: dict[str, Any] = field(default_factory=dict)
    drains: dict[str, Drain] = field(default_factory=dict)
    # Every latency run (--latency-runs), in the order they ran.
    latency_runs: list[Latency] = field(default_factory=list)
    rss_1m: Rss1M | None = None
    profile: dict[str, Any] | None = None
    scaleout: Scaleout | None = None
    # The reliability comparison drained again (--reliability-runs): every rate of the pipeline and of the
    # pipeline without breakers and tiers, the first drain's included, alternating; None for a failed one.
    repeats: dict[str, list[float | None]] = field(default_factory=dict)
    # The reliability comparison's pairs: (pipeline, pipeline without breakers and tiers) rates, the two
    # drained back to back, the order alternating from pair to pair; None for a failed drain.
    reliability_pairs: list[tuple[float | None, float | None]] = field(default_factory=list)

    @property
    def latency(self) -> Latency | None:
        """The latency run the target is checked on: the one of the median p99."""
        return median_latency(self.latency_runs)

    def rate_of(self, name: str) -> float | None:
        """The contender's drain rate: the median over its repeats when it was drained more than once."""
        rates = [r for r in self.repeats.get(name, []) if r is not None]
        if len(rates) > 1:
            return statistics.median(rates)
        return self.drains[name].rate if name in self.drains else None


def median_latency(runs: list[Latency]) -> Latency | None:
    """The run of the median p99 (the upper one of an even count); a failed run counts as the slowest."""
    if not runs:
        return None
    ordered = sorted(runs, key=lambda r: math.inf if r.error else r.percentiles_ms.get("p99", math.inf))
    return ordered[len(ordered) // 2]


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (share in [0, 1]) of a non-empty list."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latency_percentiles(latencies_s: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(latencies_s, 0.50) * 1000,
        "p90": percentile(latencies_s, 0.90) * 1000,
        "p99": percentile(latencies_s, 0.99) * 1000,
        "p99.9": percentile(latencies_s, 0.999) * 1000,
        "max": max(latencies_s) * 1000,
    }


def per_second(samples: list[tuple[float, float]]) -> list[dict[str, float]]:
    """(publish time, latency) pairs in seconds -> one entry per second of publish time, from the first:
    `second` (offset), `events`, and the second's p50, p99 and max latency in ms."""
    if not samples:
        return []
    start = window_start(samples)
    by_second: dict[int, list[float]] = {}
    for sent, latency in samples:
        by_second.setdefault(int(sent - start), []).append(latency)
    return [
        {
            "second": second,
            "events": len(values),
            "p50": round(percentile(values, 0.50) * 1000, 1),
            "p99": round(percentile(values, 0.99) * 1000, 1),
            "max": round(max(values) * 1000, 1),
        }
        for second, values in sorted(by_second.items())
    ]


def window_start(samples: list[tuple[float, float]]) -> float:
    """The first second of publish time of (publish time, latency) pairs (epoch seconds; 0 without any):
    what `per_second` counts its seconds from."""
    return math.floor(min(sent for sent, _ in samples)) if samples else 0.0


def seconds_over(seconds_ms: list[dict[str, float]], over_ms: float) -> int:
    """How many of a run's seconds (`per_second`) had a p99 over `over_ms`."""
    return sum(1 for s in seconds_ms if s["p99"] > over_ms)


def slow_seconds(seconds_ms: list[dict[str, float]], over_ms: float) -> str:
    """What the report says of a run's seconds: how many had a p99 over `over_ms`, and the slowest one."""
    if not seconds_ms:
        return ""
    worst = max(seconds_ms, key=lambda s: s["p99"])
    return (
        f"{seconds_over(seconds_ms, over_ms)} of {len(seconds_ms)} seconds with p99 over {over_ms:g} ms; "
        f"the slowest, +{worst['second']:.0f} s: p99 {worst['p99']:,.0f} ms, max {worst['max']:,.0f} ms"
    )


def disk_sync_summary(sync: dict[str, Any]) -> str:
    """The probe's syncs on the database's disk (bench.disk_probe), as the latency line shows them."""
    return (
        f"disk sync p50 {sync['p50_ms']:,.0f} ms, p99 {sync['p99_ms']:,.0f} ms, max {sync['max_ms']:,.0f} ms "
        f"({len(sync.get('stalls', []))} of {sync['syncs']:,} over {DISK_STALL_MS:g} ms)"
    )


def disk_stalls(sync: dict[str, Any], most: int = 6) -> str:
    """The longest stalls of the probe, in time order, each at its second of the measured window."""
    longest = sorted(sync["stalls"], key=lambda stall: -stall[1])[:most]
    return ", ".join(f"{ms:,.0f} ms at +{at:.1f} s" for at, ms in sorted(longest))


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def ratios(results: Results) -> dict[str, float | None]:
    rate = {name: d.rate for name, d in results.drains.items()}
    pipeline = results.rate_of(PIPELINE)
    # The pipeline's rate is the median of its drains when it was drained more than once (the reliability
    # comparison), as is the maximum the latency run offers half of.
    return {
        "pipeline_vs_bare": _ratio(pipeline, rate.get(BARE)),
        "pipeline_vs_naive": _ratio(pipeline, rate.get(NAIVE)),
        "naive_vs_bare": _ratio(rate.get(NAIVE), rate.get(BARE)),
        "reliability_cost": reliability_cost(results),
    }


def reliability_cost(results: Results) -> float | None:
    """What breakers and tiers cost: 1 - the median over the pairs of pipeline / without (each pair drained
    back to back, so the host's drift between drains a minute apart cancels); None without a complete pair."""
    paired = [p / n for p, n in results.reliability_pairs if p is not None and n]
    return 1 - statistics.median(paired) if paired else None


def checks(results: Results, targets: Targets) -> list[Check]:
    """Every target whose inputs were measured in this run (a part not run is not checked); a part that
    failed (timeout, crash, wrong row count) is a failed check."""
    out: list[Check] = []
    r = ratios(results)
    for name, drain in results.drains.items():
        if drain.error:
            out.append(Check(f"{name} drained", "no error", drain.error, False))
        else:
            out.append(Check(f"{name} rows", f"== {drain.unique} unique", str(drain.rows), drain.rows == drain.unique))
    pipe = results.drains.get(PIPELINE)
    for key, base, minimum in (
        ("pipeline_vs_bare", BARE, targets.drain_vs_bare),
        ("pipeline_vs_naive", NAIVE, targets.drain_vs_naive),
    ):
        if pipe is not None and base in results.drains:
            value = r[key]
            ok = value is not None and value >= minimum
            out.append(Check(f"drain {key}", f">= {minimum:g}", _fmt(value, ".3f"), ok))
    if pipe is not None and not pipe.error:
        out.append(Check("partition re-reads", "== 0", str(pipe.rereads), pipe.rereads == 0))
        exact = pipe.by_hash_records == pipe.events
        out.append(Check("by-hash records", f"== {pipe.events} events", str(pipe.by_hash_records), exact))
        out.append(
            Check("sink records", f"== {pipe.unique} unique", str(pipe.sink_records), pipe.sink_records == pipe.unique)
        )
    if pipe is not None and NO_RELIABILITY in results.drains:
        cost = r["reliability_cost"]
        rereads = [d.rereads for d in (pipe, results.drains[NO_RELIABILITY])]
        confounded = " (re-reads in a run: their stalls dominate the difference)" if any(rereads) else ""
        pairs = results.reliability_pairs
        over = f" (median of {len(pairs)} pairs drained back to back)"
        failed = sum(rate is None for pair in pairs for rate in pair)
        out.append(
            Check(
                "breakers+tiers cost",
                f"<= {targets.reliability_cost:.0%}",
                _fmt(cost, ".1%") + over + confounded + (f" ({failed} repeat drain(s) failed)" if failed else ""),
                cost is not None and cost <= targets.reliability_cost and not failed,
            )
        )
    lat = results.latency
    if lat is not None:
        p99 = lat.percentiles_ms.get("p99")
        ok = lat.error is None and p99 is not None and p99 <= targets.p99_ms
        over = f" (median of {len(results.latency_runs)} runs)" if len(results.latency_runs) > 1 else ""
        shown = _fmt(p99, ".0f", " ms") + over
        out.append(Check("p99 latency at half max rate", f"<= {targets.p99_ms:g} ms", shown, ok))
        if lat.error is None and lat.unique:
            out.append(Check("latency rows", f"== {lat.unique} unique", str(lat.rows), lat.rows == lat.unique))
    if results.scaleout is not None:
        out.extend(_scaleout_checks(results.scaleout))
    if results.rss_1m is not None:
        rss = results.rss_1m
        peak = rss.drain.peak_rss_mb if rss.drain is not None else None
        held = bool(rss.seeded_duplicates_dropped)
        ok = rss.error is None and peak is not None and peak <= targets.rss_1m_mb and held
        shown = _fmt(peak, ".0f", " MB") + ("" if held else " (seeded hashes not all held)")
        out.append(Check(f"RSS with {rss.entries:,} hashes", f"<= {targets.rss_1m_mb:g} MB", shown, ok))
    return out


def _scaleout_checks(scale: Scaleout) -> list[Check]:
    """Exactly one row per unique event in every lane; the ratios are reported, with no target (how far
    they grow depends on the cores the workers get, not only on the design)."""
    out: list[Check] = []
    for n, d in scale.drains.items():
        name = f"scale-out {n} worker{'s' if n > 1 else ''}"
        if d.error:
            out.append(Check(f"{name} drained", "no error", d.error, False))
            continue
        out.append(Check(f"{name} rows", f"== {d.unique} unique", str(d.rows), d.rows == d.unique))
        if n > 1:
            ratio = scale.ratios()[n]
            out.append(Check(f"{name} drain vs 1 worker", "reported", _fmt(ratio, ".2f", "x"), True))
    return out


def drained(label: str, d: Drain) -> None:
    """The progress line of one finished drain."""
    print(f"bench:   {label}: {d.rate or 0:,.0f} events/s" + (f" ERROR {d.error}" if d.error else ""), flush=True)


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def render(results: Results, targets: Targets) -> str:
    """The report as plain text (printed at the end of a run and kept in the JSON)."""
    lines = []
    meta = results.meta
    if meta:
        lines.append(
            f"backlog: {meta.get('events', '?'):,} events, {meta.get('duplicate_share', 0):.0%} duplicates, "
            f"{meta.get('partitions', '?')} partitions; {meta.get('cpus', '?')} CPUs; {meta.get('started', '')}"
        )
    if results.drains:
        lines.append("")
        lines.append(
            f"{'contender':28} {'events/s':>9} {'drain s':>8} {'start s':>8} {'CPU s/1k':>9} {'peak RSS':>9} "
            f"{'steal':>5}  rows"
        )
        for name, d in results.drains.items():
            lines.append(
                f"{name:28} {_fmt(d.rate, ',.0f'):>9} {_fmt(d.drain_s, '.1f'):>8} {_fmt(d.startup_s, '.1f'):>8} "
                f"{_fmt(d.cpu_s_per_1k, '.3f'):>9} {_fmt(d.peak_rss_mb, '.0f', ' MB'):>9} "
                f"{_fmt(d.steal_cores, '.2f'):>5}  {d.rows:,}/{d.unique:,}" + (f"  ERROR: {d.error}" if d.error else "")
            )
        for name, d in results.drains.items():
            if d.by_hash_records is not None or d.rereads is not None:
                lines.append(
                    f"{name}: by-hash records {_fmt_int(d.by_hash_records)} for {d.events:,} events, sink records "
                    f"{_fmt_int(d.sink_records)} for {d.unique:,} unique, partition re-reads {_fmt_int(d.rereads)}"
                    + ("" if d.commits_settled in (None, True) else " (commits had not reached the ends)")
                )
        r = ratios(results)
        shown = [f"{k} {v:.3f}" if k != "reliability_cost" else f"{k} {v:.1%}" for k, v in r.items() if v is not None]
        if shown:
            lines.append("ratios: " + ", ".join(shown))
        if results.reliability_pairs:
            each = [
                f"{_fmt_rate(p)} / {_fmt_rate(n)}" + (f" ({1 - p / n:+.1%})" if p is not None and n else "")
                for p, n in results.reliability_pairs
            ]
            lines.append("reliability pairs, ev/s with / without breakers and tiers (cost): " + ", ".join(each))
    lat = results.latency
    if lat is not None:
        pct = ", ".join(f"{k} {v:.0f} ms" for k, v in lat.percentiles_ms.items())
        lines.append(
            f"latency at {lat.offered_rate:,.0f} events/s for {lat.seconds:.0f} s"
            + (f" after {lat.warmup_seconds:.0f} s of warm-up" if lat.warmup_seconds else "")
            + f" ({lat.sent:,} events, {lat.duplicate_share:.0%} duplicates; {lat.rows:,}/{lat.unique:,} rows): "
            + (pct or "-")
            + (f"; worker CPU {lat.cpu_s_per_1000:.3f} s per 1,000 events" if lat.cpu_s_per_1000 is not None else "")
            + (f"; host steal {lat.steal_cores:.2f} cores" if lat.steal_cores is not None else "")
            + (f"; {disk_sync_summary(lat.disk_sync)}" if lat.disk_sync.get("syncs") else "")
            + (f"  ERROR: {lat.error}" if lat.error else "")
        )
        for hop, values in lat.hops_ms.items():
            lines.append(f"  {hop} hop: " + ", ".join(f"{k} {v:.0f} ms" for k, v in values.items()))
        if lat.seconds_ms:
            lines.append(f"  per second: {slow_seconds(lat.seconds_ms, targets.p99_ms)}")
        if lat.disk_sync.get("stalls"):
            lines.append(f"  disk sync stalls: {disk_stalls(lat.disk_sync)}")
        if len(results.latency_runs) > 1:
            each = [
                "failed"
                if r.error
                else _fmt(r.percentiles_ms.get("p99"), ".0f", " ms")
                + ("" if r.steal_cores is None else f" (steal {r.steal_cores:.2f})")
                + ("" if not r.seconds_ms else f" ({seconds_over(r.seconds_ms, targets.p99_ms)} s over)")
                + ("" if not r.disk_sync.get("syncs") else f" (disk sync max {r.disk_sync['max_ms']:,.0f} ms)")
                for r in results.latency_runs
            ]
            lines.append(f"  (the run of the median p99 of {len(each)}; each run's p99: {', '.join(each)})")
    if results.rss_1m is not None:
        rss = results.rss_1m
        rd = rss.drain
        lines.append(
            f"dedupe table with {rss.entries:,} hashes ({rss.fill}): peak RSS "
            f"{_fmt(rd.peak_rss_mb if rd else None, '.0f', ' MB')}, "
            f"start-up {_fmt(rd.startup_s if rd else None, '.1f', ' s')}, "
            f"drain {_fmt(rd.rate if rd else None, ',.0f', ' events/s')}, seeded duplicates dropped: "
            f"{rss.seeded_duplicates_dropped}" + (f"  ERROR: {rss.error}" if rss.error else "")
        )
    if results.scaleout is not None:
        lines.extend(_render_scaleout(results.scaleout, results.meta.get("cpus")))
    if results.profile is not None:
        profile = results.profile
        lines.append(
            f"profile: {profile.get('samples', 0):,} samples over {profile.get('seconds', 0):.0f} s of a "
            f"{profile.get('events', 0):,}-event drain; leaf in asyncio's own machinery: "
            f"{profile.get('event_loop_share', 0)}% of samples; raw stacks in {profile.get('raw')}"
        )
        for title, key in (("own time", "own"), ("cumulative time below the event loop's dispatch", "cumulative")):
            lines.append(f"  top {len(results.profile.get(key, []))} by {title}:")
            lines.extend(f"    {share:5.1f}%  {frame}" for frame, share in results.profile.get(key, []))
    lines.append("")
    lines.append("targets:")
    for check in checks(results, targets):
        lines.append(f"  [{'ok' if check.ok else 'MISS'}] {check.name}: {check.value} (target {check.target})")
    return "\n".join(lines)


def _render_scaleout(scale: Scaleout, cpus: object) -> list[str]:
    where = f", sink round trip {scale.sink_rtt_ms:g} ms" if scale.sink_rtt_ms else ", sink on this host"
    given = "".join(f", {k}={v}" for k, v in scale.env.items())
    lines = ["", f"scale-out: one app, {scale.partitions} partitions, groups formed before the backlog{where}{given}"]
    lines.append(
        f"{'workers':>7} {'events/s':>9} {'vs 1':>6} {'drain s':>8} {'start s':>8} {'CPU s/1k':>9}"
        f" {'redone':>7} {'re-reads':>8} {'rebalances':>10}  rows"
    )
    ratio = scale.ratios()
    for n, d in scale.drains.items():
        lines.append(
            f"{n:>7} {_fmt(d.rate, ',.0f'):>9} {_fmt(ratio[n], '.2f', 'x'):>6} {_fmt(d.drain_s, '.1f'):>8} "
            f"{_fmt(d.startup_s, '.1f'):>8} {_fmt(d.cpu_s_per_1k, '.3f'):>9} {_fmt_int(scale.redone(n)):>7} "
            f"{_fmt_int(d.rereads):>8} {_fmt_int(scale.rebalances(n)):>10}  {d.rows:,}/{d.unique:,}"
            + ("" if d.commits_settled in (None, True) else " (commits had not reached the ends)")
            + (f"  ERROR: {d.error}" if d.error else "")
        )
    most = max(scale.drains, default=0)
    if isinstance(cpus, int) and most > cpus and not scale.sink_rtt_ms:
        lines.append(
            f"  {most} workers share {cpus} CPUs here: the drain is CPU-bound on this host, so the ratios show "
            "the workers' contention for cores, not the design's limit (that is the partition count)"
        )
    return lines


def _fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _fmt_int(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def to_json(results: Results, targets: Targets) -> dict[str, Any]:
    drains = {}
    for name, d in results.drains.items():
        drains[name] = {**asdict(d), "rate": d.rate, "cpu_s_per_1k": d.cpu_s_per_1k}
    rss = None
    if results.rss_1m is not None:
        rss = asdict(results.rss_1m)
        if results.rss_1m.drain is not None:
            rss["drain"] = {**rss["drain"], "rate": results.rss_1m.drain.rate}
    return {
        "meta": results.meta,
        "drains": drains,
        "ratios": ratios(results),
        "latency": asdict(lat) if (lat := results.latency) else None,
        "latency_runs": [asdict(r) for r in results.latency_runs] or None,
        "rss_1m": rss,
        "profile": results.profile,
        "scaleout": _scaleout_json(results.scaleout),
        "repeats": results.repeats or None,
        "reliability_pairs": results.reliability_pairs or None,
        "targets": asdict(targets),
        "checks": [asdict(c) for c in checks(results, targets)],
    }


def _scaleout_json(scale: Scaleout | None) -> dict[str, Any] | None:
    if scale is None:
        return None
    ratio = scale.ratios()
    drains = {
        str(n): {
            **asdict(d),
            "rate": d.rate,
            "ratio_to_1_worker": ratio[n],
            "redone": scale.redone(n),
            "rebalances": scale.rebalances(n),
        }
        for n, d in scale.drains.items()
    }
    return {"partitions": scale.partitions, "sink_rtt_ms": scale.sink_rtt_ms, "env": scale.env, "drains": drains}


def save(results: Results, targets: Targets, directory: Path, now: datetime | None = None) -> Path:
    """Write `<UTC timestamp>.json` and `latest.json` into `directory`; return the timestamped path."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(to_json(results, targets), indent=1) + "\n"
    path = directory / f"{stamp}.json"
    path.write_text(text)
    (directory / "latest.json").write_text(text)
    return path
