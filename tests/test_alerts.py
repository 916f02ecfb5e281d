"""The alert rules: promtool checks and unit tests (deploy/prometheus/alerts_test.yml, one per alert), the
annotations every alert carries, and runbook sections matching their runbook_url."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from tests.prometheus_server import ALERTS, require_binary
from tests.support import REPO

RULES_DIR = ALERTS.parent
RUNBOOK = REPO / "docs" / "operations.md"
# The seeds' recommended alerts, with their expressions (SinkQueueGrowth: deriv, see alerts.yml).
SEEDS = {
    "SinkCircuitBreakerOpen": ("mship_sink_circuit_state == 1", "5m"),
    "SinkQueueNearFull": ("mship_sink_queue_bytes / 104857600 > 0.9", "10m"),
    "HighDeadLetterQueueRate": ("rate(mship_sink_dlq_total[5m]) > 0.01", "5m"),
    "HighSinkRetryRate": ("rate(mship_sink_retry_total[5m]) > 0.1", "10m"),
    "SinkQueueGrowth": ("deriv(mship_sink_queue_size[5m]) > 1", "15m"),
}
OURS = {
    "SinkBacklogNearRetention",
    "SinkEventsExpired",
    "ConsumerStalled",
    "PartitionReReads",
    "SinkOpenFailures",
    "SinkRouteBlocked",
    "PipelineWorkerDown",
}


def load(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in load(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = require_binary("promtool")
    return subprocess.run([str(binary), *args], cwd=RULES_DIR, capture_output=True, text=True, timeout=60)


def test_promtool_check_rules_and_config() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_seeds_alerts_and_ours_are_there() -> None:
    rules = alerts()
    assert set(rules) == set(SEEDS) | OURS
    for name, (expr, for_) in SEEDS.items():
        assert (rules[name]["expr"].strip(), rules[name]["for"]) == (expr, for_), name


def test_every_alert_has_a_unit_test_that_fires_and_one_that_does_not() -> None:
    tests = load(RULES_DIR / "alerts_test.yml")["tests"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fires == set(alerts()), set(alerts()) - fires
    assert quiet == set(alerts()), set(alerts()) - quiet


@pytest.mark.parametrize("name", sorted(set(SEEDS) | OURS))
def test_alert_annotations_and_runbook_url(name: str) -> None:
    rule = alerts()[name]
    assert rule["labels"]["severity"] in {"warning", "critical"}
    annotations = rule["annotations"]
    assert annotations["summary"] and annotations["description"]
    assert annotations["runbook_url"] == f"docs/operations.md#{name.lower()}"


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a document's headings: lower-cased, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in markdown.splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            text = re.sub(r"[^\w\- ]", "", heading[1].lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def test_runbook_has_a_section_per_alert() -> None:
    anchors = github_anchors(RUNBOOK.read_text())
    missing = {rule["annotations"]["runbook_url"].split("#", 1)[1] for rule in alerts().values()} - anchors
    assert not missing, f"docs/operations.md has no section for {sorted(missing)}"
