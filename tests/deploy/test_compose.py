"""docker-compose.yml against the settings model and the Dockerfile (no Docker engine here; `docker compose
config` runs only when an engine and the compose plugin answer)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from pipeline.config import _GLOBAL_ENV, known_env_names, load_settings
from pipeline.devstack.kafka import docker_engine_available
from tests.docker_build import parse_dockerfile
from tests.support import REPO

COMPOSE = REPO / "docker-compose.yml"
SERVICES = {"kafka", "timescaledb", "loki", "prometheus", "grafana", "topics", "worker-1", "worker-2"}
WORKERS = ("worker-1", "worker-2")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = YAML(typ="safe").load(COMPOSE.read_text())
    return data


def _services(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose["services"]
    return services


def _pipeline_services(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run this repo's image (built from the Dockerfile)."""
    return {name: s for name, s in _services(compose).items() if s.get("build") == "."}


def _env(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, Mapping), "environment as a mapping (names checked against the settings)"
    return {str(k): str(v) for k, v in env.items()}


def test_every_service_of_the_stack_is_there(compose: dict[str, Any]) -> None:
    assert set(_services(compose)) == SERVICES
    assert set(_pipeline_services(compose)) == {"topics", *WORKERS}
    assert _services(compose)["kafka"]["image"].startswith("apache/kafka:")
    assert _services(compose)["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert _services(compose)["timescaledb"]["image"].startswith("timescale/timescaledb:")


def test_pipeline_env_names_are_settings_and_the_values_load(compose: dict[str, Any], tmp_path: Path) -> None:
    known = known_env_names(load_settings(environ={}).sinks)
    for name, service in _pipeline_services(compose).items():
        env = _env(service)
        unknown = sorted(set(env) - known)
        assert not unknown, f"{name}: env names the settings model does not know: {unknown}"
        image_env = parse_dockerfile().final.env()
        settings = load_settings(environ={**image_env, **env, "STRICT_CONFIG": "true"})
        settings.check_runnable()
        assert settings.kafka.bootstrap_servers == "kafka:9092"
        assert {s.name for s in settings.enabled_sinks()} == {"tsdb", "loki"}
    instance_ids = [_env(_services(compose)[w])["KAFKA_GROUP_INSTANCE_ID"] for w in WORKERS]
    assert len(set(instance_ids)) == len(WORKERS), "static membership needs one id per worker"


def test_health_checks_and_start_order(compose: dict[str, Any]) -> None:
    services = _services(compose)
    image_health = parse_dockerfile().final.last("HEALTHCHECK")
    for name, service in services.items():
        if name == "topics":
            assert service["command"] == ["topics", "apply"] and service["restart"] == "no"
            continue
        has_check = "healthcheck" in service or (service.get("build") == "." and image_health is not None)
        assert has_check, f"{name} has no health check"
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}'s health check"
    assert services["topics"]["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    for worker in WORKERS:
        depends = services[worker]["depends_on"]
        assert depends["topics"] == {"condition": "service_completed_successfully"}
        assert depends["timescaledb"]["condition"] == depends["loki"]["condition"] == "service_healthy"
        assert _env(services[worker])["TOPICS_AUTO_APPLY"] == "false"
    assert set(services["grafana"]["depends_on"]) == {"prometheus", "loki"}


def test_ports_volumes_and_read_only_workers(compose: dict[str, Any]) -> None:
    services = _services(compose)
    image_env = parse_dockerfile().final.env()
    host_ports: list[str] = []
    for service in services.values():
        host_ports += [str(p).split(":")[0] for p in service.get("ports") or []]
    assert len(host_ports) == len(set(host_ports)), f"host ports collide: {host_ports}"
    named = set(compose["volumes"])
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source = str(volume).split(":")[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name}: bind mount {source} is missing"
            else:
                assert source in named, f"{name}: volume {source} is not declared"
    for worker in WORKERS:
        service = services[worker]
        assert service["read_only"] is True and "/tmp" in service["tmpfs"]
        (port,) = service["ports"]
        assert str(port).endswith(f":{image_env[_GLOBAL_ENV['web_port']]}")
        (volume,) = service["volumes"]
        assert volume == f"{worker}-data:{image_env[_GLOBAL_ENV['data_dir']]}", "RocksDB on a volume per worker"
    prometheus = " ".join(services["prometheus"]["volumes"])
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml" in prometheus
    grafana = " ".join(services["grafana"]["volumes"])
    assert "deploy/grafana/provisioning/dashboards" in grafana and "deploy/grafana/dashboards" in grafana


def test_prometheus_scrapes_every_worker_and_loads_the_rules_grafana_gets_both_sources(
    compose: dict[str, Any],
) -> None:
    services = _services(compose)
    mounts = dict(str(v).split(":")[:2][::-1] for v in services["prometheus"]["volumes"] if str(v).startswith("."))
    config = YAML(typ="safe").load((REPO / mounts["/etc/prometheus/prometheus.yml"]).read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    (job,) = config["scrape_configs"]
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    port = parse_dockerfile().final.env()[_GLOBAL_ENV["web_port"]]
    assert sorted(targets) == [f"{worker}:{port}" for worker in WORKERS]
    grafana = dict(str(v).split(":")[:2][::-1] for v in services["grafana"]["volumes"] if str(v).startswith("."))
    sources = YAML(typ="safe").load((REPO / grafana["/etc/grafana/provisioning/datasources/pipeline.yml"]).read_text())
    urls = {s["type"]: s["url"] for s in sources["datasources"]}
    assert urls == {"prometheus": "http://prometheus:9090", "loki": "http://loki:3100"}


def _compose_cli() -> bool:
    if shutil.which("docker") is None or not docker_engine_available():
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(not _compose_cli(), reason="no Docker engine with the compose plugin answers here")
def test_docker_compose_config_accepts_the_file() -> None:
    done = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
