"""helm/pipeline rendered and checked by real tools: `helm lint`, `helm template` (default values, and
ci/all-on-values.yaml with every option on), the manifests validated offline against the Kubernetes schemas
(kubernetes-validate, strict) and the custom resources against the vendored schemas in tests/deploy/schemas.
helm comes from scripts/ensure-helm (run by scripts/bootstrap; built with `go install` into
~/.cache/pipeline/helm)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from ruamel.yaml import YAML

from pipeline.config import known_env_names, load_settings
from pipeline.topics import load_topics
from tests.support import REPO

CHART = REPO / "helm" / "pipeline"
ALL_ON = CHART / "ci" / "all-on-values.yaml"
HERE = Path(__file__).parent
SCHEMAS = {
    "ScaledObject": HERE / "schemas" / "keda.sh_v1alpha1_scaledobject.json",
    "ServiceMonitor": HERE / "schemas" / "monitoring.coreos.com_v1_servicemonitor.json",
    "PrometheusRule": HERE / "schemas" / "monitoring.coreos.com_v1_prometheusrule.json",
}
KUBERNETES_VERSION = "1.33.0"
DEFAULT_KINDS = {"ConfigMap", "StatefulSet", "Service", "PodDisruptionBudget", "Job"}

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def helm() -> str:
    script = REPO / "scripts" / "ensure-helm"
    path = subprocess.run(["bash", str(script), "--print-path"], capture_output=True, text=True, check=True)
    binary = path.stdout.strip()
    if not os.access(binary, os.X_OK):
        subprocess.run(["bash", str(script)], check=True, timeout=900)  # what scripts/bootstrap runs
    if not os.access(binary, os.X_OK):
        pytest.skip("helm could not be built (scripts/ensure-helm says why: it needs Go >= 1.24)")
    return binary


def _helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, env=_offline_env())


def _offline_env() -> dict[str, str]:
    # No repository index or plugin lookups: everything helm needs is in the chart.
    return {**os.environ, "HELM_CACHE_HOME": "/nonexistent-helm-cache", "HELM_NO_PLUGINS": "1"}


def _render(helm: str, *values: Path) -> list[dict[str, Any]]:
    args = ["template", "rel", str(CHART), "--namespace", "data", "--kube-version", KUBERNETES_VERSION]
    for path in values:
        args += ["-f", str(path)]
    done = _helm(helm, *args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in YAML(typ="safe").load_all(done.stdout) if doc]


def _by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in _by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def _validate(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        if doc["kind"] in SCHEMAS:
            schema = json.loads(SCHEMAS[doc["kind"]].read_text())
            jsonschema.validate(doc, schema)
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("values", [None, ALL_ON], ids=["default", "all-on"])
def test_helm_lint_passes(helm: str, values: Path | None) -> None:
    args = ["lint", "--strict", "--kube-version", KUBERNETES_VERSION, str(CHART)]
    args += ["-f", str(values)] if values else []
    done = _helm(helm, *args)
    assert done.returncode == 0, done.stdout + done.stderr


def test_default_values_render_valid_kubernetes_manifests(helm: str) -> None:
    docs = _render(helm)
    assert {d["kind"] for d in docs} == DEFAULT_KINDS
    _validate(docs)
    sts = _one(docs, "StatefulSet")
    spec = sts["spec"]
    assert spec["replicas"] == 2 and spec["serviceName"] == "rel-pipeline-headless"
    (claim,) = spec["volumeClaimTemplates"]
    pod = spec["template"]["spec"]
    (worker,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}
    env = {e["name"]: e for e in worker["env"]}
    assert mounts[claim["metadata"]["name"]] == env["PIPELINE_DATA_DIR"]["value"] == "/var/lib/pipeline"
    assert env["KAFKA_GROUP_INSTANCE_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["TOPICS_AUTO_APPLY"]["value"] == "false", "the hook Job applies the topics"
    assert worker["args"] == ["worker"]
    assert worker["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert worker["resources"]["requests"] and worker["resources"]["limits"]
    security = worker["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert _one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    job = _one(docs, "Job")
    hooks = job["metadata"]["annotations"]["helm.sh/hook"].split(",")
    assert sorted(hooks) == ["pre-install", "pre-upgrade"]
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["topics", "apply"]
    hook_config = _one(docs, "ConfigMap", "rel-pipeline-topics")
    assert (
        hook_config["metadata"]["annotations"]["helm.sh/hook-weight"]
        < job["metadata"]["annotations"]["helm.sh/hook-weight"]
    ), "the Job's ConfigMap exists before the Job"


def test_all_options_on_render_valid_manifests_and_custom_resources(helm: str) -> None:
    docs = _render(helm, ALL_ON)
    assert {d["kind"] for d in docs} == DEFAULT_KINDS | set(SCHEMAS)
    _validate(docs)
    scaled = _one(docs, "ScaledObject")
    assert scaled["spec"]["maxReplicaCount"] == 12, "autoscaling.maxReplicas 20 capped at the 12 partitions"
    assert "replicas" not in _one(docs, "StatefulSet")["spec"], "KEDA owns the replica count"
    triggers = {t["name"]: t["metadata"] for t in scaled["spec"]["triggers"]}
    assert triggers["ingest"]["consumerGroup"] == "orders" and triggers["ingest"]["topic"] == "orders.ingest"
    assert triggers["deliver-loki"]["consumerGroup"] == "orders.deliver.loki"
    assert triggers["deliver-loki"]["topic"] == "orders.sink.loki"
    rules = YAML(typ="safe").load((CHART / "files" / "alerts.yml").read_text())
    assert _one(docs, "PrometheusRule")["spec"]["groups"] == rules["groups"]
    assert _one(docs, "ServiceMonitor")["spec"]["endpoints"][0]["path"] == "/metrics"
    dashboards = _one(docs, "ConfigMap", "rel-pipeline-dashboards")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard_file = CHART / "files" / "dashboards" / "pipeline.json"
    assert json.loads(dashboards["data"]["pipeline.json"]) == json.loads(dashboard_file.read_text())


@pytest.mark.parametrize("values", [None, ALL_ON], ids=["default", "all-on"])
def test_the_pods_env_and_config_map_load_as_settings_without_secrets(
    helm: str, values: Path | None, tmp_path: Path
) -> None:
    mounted_files = tmp_path  # stand-ins for the Secret files the pods mount under /etc/pipeline/secrets
    docs = _render(helm, *([values] if values else []))
    config_map = _one(docs, "ConfigMap", "rel-pipeline")
    config_file = mounted_files / "config.yaml"
    config_file.write_text(config_map["data"]["config.yaml"])
    for pod_owner in (_one(docs, "StatefulSet"), _one(docs, "Job")):
        (container,) = pod_owner["spec"]["template"]["spec"]["containers"]
        environ: dict[str, str] = {}
        for entry in container["env"]:
            if "value" in entry:
                value = entry["value"]
                if value.startswith("/etc/pipeline/secrets/"):  # a mounted Secret file: a stand-in here
                    value = str(mounted_files / Path(value).name)
                    Path(value).write_text("stand-in\n")
                environ[entry["name"]] = value
            elif "secretKeyRef" in entry["valueFrom"]:
                environ[entry["name"]] = "stand-in-secret"
            else:
                environ[entry["name"]] = "rel-pipeline-0"  # the downward API's pod name
        environ["PIPELINE_CONFIG"] = str(config_file)
        if "TOPICS_FILE" in environ:
            topics_file = mounted_files / "topics.yaml"
            topics_file.write_text(config_map["data"]["topics.yaml"])
            environ["TOPICS_FILE"] = str(topics_file)
        settings = load_settings(environ={**environ, "STRICT_CONFIG": "true"})
        settings.check_runnable()
        unknown = sorted(set(environ) - known_env_names(settings.sinks))
        assert not unknown, f"env names the settings model does not know: {unknown}"
        load_topics(settings.topics_path(), settings.topic_vars())
    text = json.dumps(config_map["data"])
    assert "stand-in" not in text and "password:" not in text and "token:" not in text


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (HERE / "bad-values.yaml", "replicaCount"),
        (HERE / "secret-in-config-values.yaml", "password"),
    ],
    ids=["wrong-type", "secret-in-config"],
)
def test_values_the_schema_refuses_fail_lint_and_template(helm: str, values: Path, expected: str) -> None:
    for command in (["lint", str(CHART)], ["template", "rel", str(CHART), "--kube-version", KUBERNETES_VERSION]):
        command += ["-f", str(values)]
        done = _helm(helm, *command)
        assert done.returncode != 0, f"helm {command[0]} accepted {values.name}"
        output = done.stdout + done.stderr
        assert "schema" in output and expected in output, output


def test_the_schema_has_no_remote_ref() -> None:
    text = (CHART / "values.schema.json").read_text()
    refs = [line for line in text.splitlines() if '"$ref"' in line]
    assert refs and all('"#/' in line for line in refs), refs


def test_more_workers_than_partitions_is_refused(helm: str) -> None:
    done = _helm(helm, "template", "rel", str(CHART), "--kube-version", KUBERNETES_VERSION, "--set", "replicaCount=7")
    assert done.returncode != 0 and "topic_partitions" in done.stderr
