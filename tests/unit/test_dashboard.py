"""The committed Grafana dashboard is what tools/dashboard.py builds, and is fit for file provisioning."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests import dashboard_queries as dq
from tests.support import REPO
from tools import dashboard

REQUIRED_PANELS = {
    "Throughput in and out",
    "Duplicates and rejects",
    "Consumer lag per partition (records)",
    "Backlog age against retention",
    "Breaker state per sink",
    "Retries by tier",
    "DLQ rate",
    "Write latency p50 / p95 / p99",
    "Errors by class",
    "Partition re-reads",
}


def test_committed_json_is_what_the_generator_builds() -> None:
    assert dq.DASHBOARD.read_text() == dashboard.render(), "run `make dashboard` and commit the JSON"


def test_check_mode_fails_on_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "pipeline.json"
    stale.write_text(dashboard.render().replace("Throughput in and out", "Throughput"))
    assert dashboard.main(["--check", "--output", str(stale)]) == 1
    assert dashboard.main(["--output", str(stale)]) == 0
    assert dashboard.main(["--check", "--output", str(stale)]) == 0


def test_datasource_is_a_datasource_variable_not_an_input() -> None:
    board = dq.load()
    text = dq.DASHBOARD.read_text()
    assert "__inputs" not in board and "${DS_" not in text
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in dq.panels(board):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    for name in ("worker", "sink"):
        assert variables[name]["datasource"]["uid"] == "${datasource}"
        assert variables[name]["includeAll"] and variables[name]["multi"] and variables[name]["allValue"] == ".*"
    assert variables["worker"]["query"] == "label_values(pipeline_worker_info, instance)"


def test_every_query_filters_by_worker_and_sink_metrics_by_sink() -> None:
    board = dq.load()
    for panel in dq.panels(board):
        for target in panel["targets"]:
            expr = target["expr"]
            assert 'instance=~"$worker"' in expr, (panel["title"], expr)
            if re.search(r"\b(mship_sink_|pipeline_sink_)", expr):
                assert 'sink=~"$sink"' in expr, (panel["title"], expr)


def test_panels_cover_the_issue_and_ids_are_unique() -> None:
    board = dq.load()
    titles = {p["title"] for p in dq.panels(board)}
    assert titles >= REQUIRED_PANELS, REQUIRED_PANELS - titles
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert set(dashboard.CORE_PANELS) <= titles
    breaker = next(p for p in dq.panels(board) if p["title"] == "Breaker state per sink")
    assert breaker["type"] == "state-timeline"
    texts = {k: v["text"] for k, v in breaker["fieldConfig"]["defaults"]["mappings"][0]["options"].items()}
    assert texts == {"0": "closed", "1": "open", "2": "half-open"}


def test_provisioning_points_at_the_dashboards_folder() -> None:
    from ruamel.yaml import YAML

    root = REPO / "deploy" / "grafana"
    yaml = YAML(typ="safe")
    provider = yaml.load((root / "provisioning" / "dashboards" / "pipeline.yml").read_text())["providers"][0]
    assert provider["type"] == "file"
    compose = yaml.load((REPO / "deploy" / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
    datasource = yaml.load((root / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert datasource["type"] == "prometheus"
    json.loads(dq.DASHBOARD.read_text())  # valid JSON
    assert dashboard.OUTPUT == dq.DASHBOARD


def metric_names_used() -> set[str]:
    alerts = (REPO / "deploy" / "prometheus" / "alerts.yml").read_text()
    return set(re.findall(r"\b(?:mship|pipeline|kafka_consumergroup)_[a-z_]+", dq.DASHBOARD.read_text() + alerts))


def test_every_metric_used_is_in_the_workers_registry() -> None:
    from prometheus_client.metrics_core import Metric

    from pipeline.observability.metrics import REGISTRY

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    families: list[Metric] = list(REGISTRY.collect())
    defined = {f.name + suffix for f in families for suffix in suffixes.get(f.type, ("",))}
    missing = metric_names_used() - defined
    assert not missing, f"the dashboard or alerts use metrics no worker exports: {sorted(missing)}"
