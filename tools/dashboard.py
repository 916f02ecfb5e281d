"""The Grafana dashboard of the pipeline, built from typed Python (grafana-foundation-sdk, a dev dependency).

    python -m tools.dashboard          # rewrites deploy/grafana/dashboards/pipeline.json
    python -m tools.dashboard --check  # exits 1 when the committed JSON differs from what this builds

The panels are data (PANELS); build() turns them into the dashboard. Every query filters by the template
variables `$worker` (the scrape's `instance`, from pipeline_worker_info) and `$sink`, both multi-valued
with "All" = `.*`, and reads the datasource from the `datasource` variable (type datasource): file
provisioning does not resolve `${DS_PROMETHEUS}` inputs. Metric names: the metrics contract of issue 10.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from grafana_foundation_sdk.builders import common as gc
from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus, statetimeline, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "deploy" / "grafana" / "dashboards" / "pipeline.json"
UID = "pipeline-overview"
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")

# Label filters every query carries (the template variables).
W = 'instance=~"$worker"'
SW = f'sink=~"$sink", {W}'
RATE = "[$__rate_interval]"

Kind = Literal["timeseries", "state"]


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class PanelSpec:
    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: Kind = "timeseries"
    width: int = 12
    # Core panels must show data on any running pipeline (the e2e test against a real Prometheus checks it).
    core: bool = False
    mappings: dict[str, tuple[str, str]] = field(default_factory=dict)  # value -> (text, colour)
    red_below: float | None = None  # threshold: red under this value


def rate(metric: str, labels: str = SW, by: str = "sink") -> str:
    return f"sum by ({by}) (rate({metric}{{{labels}}}{RATE}))"


def increase(metric: str, labels: str = SW, by: str = "sink") -> str:
    return f"sum by ({by}) (increase({metric}{{{labels}}}{RATE}))"


def quantile(q: float, metric: str) -> str:
    return f"histogram_quantile({q}, sum by (sink, le) (rate({metric}_bucket{{{SW}}}{RATE})))"


BREAKER_STATES = {"0": ("closed", "green"), "1": ("open", "red"), "2": ("half-open", "yellow")}

ROWS: tuple[tuple[str, tuple[PanelSpec, ...]], ...] = (
    (
        "Flow",
        (
            PanelSpec(
                "Throughput in and out",
                "Events accepted from the ingest topic, unique events forwarded by dedupe, events written per sink.",
                (
                    Query(f"sum(rate(pipeline_ingest_events_total{{{W}}}{RATE}))", "ingested"),
                    Query(f"sum(rate(pipeline_dedupe_forwarded_total{{{W}}}{RATE}))", "forwarded (unique)"),
                    Query(rate("pipeline_sink_events_written_total"), "written {{sink}}"),
                ),
                unit="ops",
                core=True,
            ),
            PanelSpec(
                "Duplicates and rejects",
                "Events dropped as duplicates within the idempotency window; ingest messages sent to the ingest DLQ.",
                (
                    Query(f"sum(rate(pipeline_dedupe_duplicates_total{{{W}}}{RATE}))", "duplicates dropped"),
                    Query(rate("pipeline_ingest_rejected_total", W, "reason"), "rejected: {{reason}}"),
                ),
                unit="ops",
            ),
            PanelSpec(
                "Consumer lag per partition (records)",
                "Records not yet committed by each consumer group, from committed offsets and high watermarks.",
                (
                    Query(
                        f"max by (group, topic, partition) (kafka_consumergroup_group_lag{{{W}}})",
                        "{{topic}}[{{partition}}] {{group}}",
                    ),
                ),
                core=True,
            ),
            PanelSpec(
                "Consumer lag per partition (seconds)",
                "Age of the next record each consumer group has not committed.",
                (
                    Query(
                        f"max by (group, topic, partition) (kafka_consumergroup_group_lag_seconds{{{W}}})",
                        "{{topic}}[{{partition}}] {{group}}",
                    ),
                ),
                unit="s",
            ),
        ),
    ),
    (
        "Delivery",
        (
            PanelSpec(
                "Backlog age against retention",
                "Age of the oldest event not yet written, and the sink topic's retention: where they meet, Kafka "
                "deletes undelivered events.",
                (
                    Query(f"max by (sink) (pipeline_sink_backlog_age_seconds{{{SW}}})", "backlog age {{sink}}"),
                    Query(
                        f"max by (sink) (pipeline_sink_backlog_age_seconds{{{SW}}}"
                        f" + pipeline_sink_retention_headroom_seconds{{{SW}}})",
                        "retention {{sink}}",
                    ),
                ),
                unit="s",
                core=True,
            ),
            PanelSpec(
                "Retention headroom",
                "Share of the sink topic's retention left before undelivered events are deleted (alert under 25%).",
                (Query(f"min by (sink) (pipeline_sink_retention_headroom_ratio{{{SW}}})", "{{sink}}"),),
                unit="percentunit",
                red_below=0.25,
            ),
            PanelSpec(
                "Breaker state per sink",
                "Circuit breaker of each sink over time: closed, open (events wait in Kafka), half-open (probing).",
                (Query(f"max by (sink) (mship_sink_circuit_state{{{SW}}})", "{{sink}}"),),
                kind="state",
                core=True,
                mappings=BREAKER_STATES,
            ),
            PanelSpec(
                "Breaker opens and admin actions",
                "Times a breaker opened, and admin reset / force-open / force-close calls.",
                (
                    Query(increase("mship_sink_circuit_open_total"), "opened {{sink}}"),
                    Query(increase("pipeline_breaker_admin_total", SW, "sink, action"), "{{action}} {{sink}}"),
                ),
            ),
            PanelSpec(
                "Waiting in Kafka per sink",
                "Records waiting for each sink in its topic and retry tiers, not yet consumed by its group.",
                (Query(f"max by (sink) (mship_sink_queue_size{{{SW}}})", "{{sink}}"),),
            ),
            PanelSpec(
                "Write latency p50 / p95 / p99",
                "Time of one batch write to the sink.",
                (
                    Query(quantile(0.5, "mship_sink_write_seconds"), "p50 {{sink}}"),
                    Query(quantile(0.95, "mship_sink_write_seconds"), "p95 {{sink}}"),
                    Query(quantile(0.99, "mship_sink_write_seconds"), "p99 {{sink}}"),
                ),
                unit="s",
                core=True,
            ),
            PanelSpec(
                "Batch size p50 / p99",
                "Events per batch write.",
                (
                    Query(quantile(0.5, "pipeline_sink_batch_size"), "p50 {{sink}}"),
                    Query(quantile(0.99, "pipeline_sink_batch_size"), "p99 {{sink}}"),
                ),
            ),
        ),
    ),
    (
        "Failures",
        (
            PanelSpec(
                "Retries by tier",
                "Events moved to a retry tier, per sink and tier.",
                (Query(rate("mship_sink_retry_total", SW, "sink, tier"), "{{sink}} {{tier}}"),),
                unit="ops",
            ),
            PanelSpec(
                "DLQ rate",
                "Events dead-lettered per sink and reason.",
                (Query(rate("mship_sink_dlq_total", SW, "sink, reason"), "{{sink}} {{reason}}"),),
                unit="ops",
            ),
            PanelSpec(
                "Errors by class",
                "Failed writes by error class, and timeouts.",
                (
                    Query(rate("mship_sink_error_total", SW, "sink, error"), "{{sink}} {{error}}"),
                    Query(rate("mship_sink_timeout_total"), "{{sink}} timeout"),
                ),
                unit="ops",
            ),
            PanelSpec(
                "Partition re-reads",
                "Partitions read again by the commit watchdog (offsets left unacked).",
                (Query(increase("pipeline_partition_rereads_total", W, "topic"), "{{topic}}"),),
            ),
            PanelSpec(
                "Expired before delivery (data loss)",
                "Events deleted by a sink or retry topic's retention before they were written.",
                (Query(increase("pipeline_sink_events_expired_total"), "{{sink}}"),),
                width=6,
            ),
            PanelSpec(
                "Route blocked and open failures",
                "Retry/DLQ produce failing (sink paused) and sink open() failures.",
                (
                    Query(increase("pipeline_sink_route_blocked_total"), "route blocked {{sink}}"),
                    Query(increase("pipeline_sink_open_failures_total"), "open failed {{sink}}"),
                ),
                width=6,
            ),
        ),
    ),
)

PANELS: tuple[PanelSpec, ...] = tuple(panel for _, panels in ROWS for panel in panels)
CORE_PANELS: tuple[str, ...] = tuple(panel.title for panel in PANELS if panel.core)


def _variables() -> list[Builder[dm.VariableModel]]:
    datasource = gd.DatasourceVariable("datasource").label("Data source").type("prometheus")

    def multi(name: str, label: str, query: str) -> gd.QueryVariable:
        return (
            gd.QueryVariable(name)
            .label(label)
            .datasource(DATASOURCE)
            .query(query)
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(dm.VariableOption(selected=True, text="All", value="$__all"))
        )

    worker = multi("worker", "Worker", "label_values(pipeline_worker_info, instance)")
    sink = multi("sink", "Sink", 'label_values(mship_sink_circuit_state{instance=~"$worker"}, sink)')
    return [datasource, worker, sink]


def _panel(spec: PanelSpec, panel_id: int, x: int, y: int) -> Builder[dm.Panel]:
    builder: timeseries.Panel | statetimeline.Panel
    builder = statetimeline.Panel() if spec.kind == "state" else timeseries.Panel()
    legend = gc.VizLegendOptions().show_legend(True).display_mode(cm.LegendDisplayMode.LIST)
    builder.legend(legend.placement(cm.LegendPlacement.BOTTOM))
    builder.id(panel_id).title(spec.title).description(spec.description).datasource(DATASOURCE).unit(spec.unit)
    builder.grid_pos(dm.GridPos(h=8, w=spec.width, x=x, y=y))
    for n, query in enumerate(spec.queries):
        ref = chr(ord("A") + n)
        builder.with_target(prometheus.Dataquery().expr(query.expr).legend_format(query.legend).ref_id(ref))
    if spec.mappings:
        options = {
            value: dm.ValueMappingResult(text=text, color=colour) for value, (text, colour) in spec.mappings.items()
        }
        builder.mappings([dm.ValueMap(options=options)])
    if spec.red_below is not None:
        steps = [dm.Threshold(value=None, color="red"), dm.Threshold(value=spec.red_below, color="green")]
        builder.thresholds(gd.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(steps))
    return builder


def build() -> dm.Dashboard:
    board = (
        gd.Dashboard("Pipeline")
        .uid(UID)
        .description("Kafka delivery pipeline: flow, lag, backlog against retention, breakers, retries, DLQ")
        .tags(["pipeline", "kafka"])
        .editable()
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
    )
    for variable in _variables():
        board.with_variable(variable)
    y = 0
    panel_id = 0
    for title, panels in ROWS:
        panel_id += 1
        board.with_row(gd.Row(title).id(panel_id).grid_pos(dm.GridPos(h=1, w=24, x=0, y=y)))
        y += 1
        x = 0
        for spec in panels:
            if x + spec.width > 24:
                x, y = 0, y + 8
            panel_id += 1
            board.with_panel(_panel(spec, panel_id, x, y))
            x += spec.width
        y += 8
    return board.build()


def render() -> str:
    """The dashboard as the JSON committed under deploy/grafana/dashboards/ (stable: sorted keys)."""
    return json.dumps(build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail when the committed JSON is not up to date")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is not what tools/dashboard.py builds: run `make dashboard`", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
