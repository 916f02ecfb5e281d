"""The README's performance plot: rows over time for each contender, and the latency percentiles."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from bench.report import Drain, Latency, Results


def plot(results: Results, path: Path) -> Path | None:
    """Write the PNG; None when matplotlib is missing (pip install -e '.[bench]') or nothing was measured."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    drains = {name: d for name, d in results.drains.items() if d.timeline}
    lat = results.latency if results.latency is not None and results.latency.percentiles_ms else None
    if not drains and lat is None:
        return None
    panels = 2 if drains and lat is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.2), squeeze=False)
    meta = results.meta
    if drains:
        ax = axes[0][0]
        for name, d in drains.items():
            xs, ys = zip(*d.timeline, strict=True)
            rate = f"{d.rate:,.0f}/s" if d.rate else "failed"
            ax.step(xs, ys, where="post", label=f"{name} ({rate})", linestyle="--" if "no-" in name else "-")
        ax.set_xlabel("seconds since the process started (log scale)")
        ax.set_ylabel("rows in the table")
        ax.set_title(
            f"draining {meta.get('events', 0):,} events ({meta.get('duplicate_share', 0):.0%} duplicates)", fontsize=10
        )
        ax.set_xscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if lat is not None:
        ax = axes[0][panels - 1]
        names = list(lat.percentiles_ms)
        values = [lat.percentiles_ms[n] for n in names]
        bars = ax.bar(names, values, color="tab:blue")
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
        ax.axhline(250, color="tab:red", linestyle=":", label="p99 target 250 ms")
        ax.set_ylabel("ms, publish to row")
        ax.set_yscale("log")
        ax.set_title(f"pipeline latency at {lat.offered_rate:,.0f} events/s (half the max)", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fields(cls: Any, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def from_json(data: dict[str, Any]) -> Results:
    """What the plot needs of a saved run (bench/results/<time>.json): its drains, latency and meta."""
    drains = {}
    for name, d in (data.get("drains") or {}).items():
        drain = Drain(**_fields(Drain, d))
        drain.timeline = [(float(t), int(rows)) for t, rows in drain.timeline]
        drains[name] = drain
    saved = data.get("latency_runs") or ([data["latency"]] if data.get("latency") else [])
    runs = [Latency(**_fields(Latency, run)) for run in saved]
    return Results(meta=data.get("meta") or {}, drains=drains, latency_runs=runs)


def main(argv: list[str]) -> int:
    """`python -m bench.plot RUN.json [OUT.png]`: draw a saved run again (default: bench.png beside it)."""
    if not argv or len(argv) > 2:
        print("usage: python -m bench.plot RUN.json [OUT.png]", file=sys.stderr)
        return 2
    source = Path(argv[0])
    out = plot(
        from_json(json.loads(source.read_text())), Path(argv[1]) if len(argv) > 1 else source.with_name("bench.png")
    )
    if out is None:
        print("nothing drawn: matplotlib is missing (pip install -e '.[bench]') or the run measured nothing")
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
