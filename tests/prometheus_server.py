"""A throwaway real Prometheus for tests (Debian: ``apt-get install prometheus``, which scripts/bootstrap does).

``PrometheusServer(workdir, targets)`` writes a config that scrapes the given ``host:port`` targets every
second (job ``pipeline``, as deploy/prometheus/prometheus.yml names it) and loads deploy/prometheus/alerts.yml,
evaluated every second; starts ``prometheus`` on a free 127.0.0.1 port with its TSDB in ``workdir``; and
reads its HTTP API (``/api/v1/query``, ``query_range``, ``rules``, ``targets``, label values).
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pytest

from pipeline.devstack.kafka import HOST, free_port
from tests.support import REPO

ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
JOB = "pipeline"
# One TLS context for every client: building one per request costs ~0.2 s (the API is plain HTTP anyway).
_TLS = ssl.create_default_context()


class PrometheusError(AssertionError):
    """The Prometheus API answered with an error (bad query, ...)."""


def find_binary(name: str) -> Path | None:
    """``$PROMETHEUS_BIN/<name>`` when PROMETHEUS_BIN is set, else ``<name>`` on PATH (prometheus, promtool)."""
    bin_dir = os.environ.get("PROMETHEUS_BIN")
    if bin_dir:
        path = Path(bin_dir) / name
        return path if path.is_file() and os.access(path, os.X_OK) else None
    found = shutil.which(name)
    return Path(found) if found else None


def require_binary(name: str) -> Path:
    """The binary, or skip the test saying how to get it."""
    path = find_binary(name)
    if path is None:
        pytest.skip(
            f"{name} not found (PROMETHEUS_BIN or PATH): install Debian's prometheus package (scripts/bootstrap)"
        )
    return path


class PrometheusServer:
    def __init__(
        self,
        workdir: Path,
        targets: Sequence[str] = (),
        *,
        rule_files: Sequence[Path] = (ALERTS,),
        interval: str = "1s",
    ) -> None:
        self.binary = require_binary("prometheus")
        self.workdir = workdir
        self.scrape_targets = list(targets)
        self.rule_files = list(rule_files)
        self.interval = interval
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def config(self) -> str:
        targets = ", ".join(f'"{t}"' for t in self.scrape_targets)
        rules = "".join(f'\n  - "{path}"' for path in self.rule_files)
        return (
            f"global:\n  scrape_interval: {self.interval}\n  evaluation_interval: {self.interval}\n"
            f"rule_files:{rules or ' []'}\n"
            f"scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: [{targets}]\n"
        )

    def start(self, timeout: float = 30) -> PrometheusServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(self.config())
        self.port = free_port()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                str(self.binary),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address={HOST}:{self.port}",
                "--log.level=warn",
                # Hidden flag: the scrape manager applies new targets every 5 s by default, so the first
                # scrape would wait that long.
                "--scrape.discovery-reload-interval=200ms",
            ],
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"prometheus not ready within {timeout}s:\n{self.tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, n: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object | TracebackType | None) -> None:
        self.stop()

    # HTTP API ------------------------------------------------------------------------------------------

    async def api(self, path: str, **params: str | float | list[str]) -> Any:
        """GET /api/v1/<path>; the `data` of a success, else PrometheusError with Prometheus' message."""
        async with httpx.AsyncClient(base_url=self.url, timeout=10, verify=_TLS) as client:
            response = await client.get(f"/api/v1/{path}", params=params)
        body = response.json()
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query at now: the result vector (a list of {metric, value})."""
        data = await self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" else [data]
        return result

    async def values(self, expr: str) -> dict[str, float]:
        """Instant query: value per series, keyed by its labels rendered as `k=v,...` (empty key: no labels)."""
        out = {}
        for sample in await self.query(expr):
            key = ",".join(f"{k}={v}" for k, v in sorted(sample["metric"].items()))
            out[key] = float(sample["value"][1])
        return out

    async def query_range(self, expr: str, start: float, end: float, step: float = 1) -> list[dict[str, Any]]:
        data = await self.api("query_range", query=expr, start=start, end=end, step=step)
        result: list[dict[str, Any]] = data["result"]
        return result

    async def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule (of every group), as /api/v1/rules lists them."""
        data = await self.api("rules")
        return [rule for group in data["groups"] for rule in group["rules"]]

    async def label_values(self, label: str, match: str) -> list[str]:
        """What Grafana's `label_values(match, label)` variable query lists."""
        values: list[str] = await self.api(f"label/{label}/values", **{"match[]": [match]})
        return values

    async def targets(self) -> list[dict[str, Any]]:
        data = await self.api("targets")
        active: list[dict[str, Any]] = data["activeTargets"]
        return active
