"""The Dockerfile and .dockerignore, read statically (no Docker engine here): stages, the non-root user,
no build tools in the final image, the entry point, the data volume, and the health check command run
against a local HTTP server. tests/e2e/test_installed_wheel.py builds the wheel from the same context."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from pipeline.config import _GLOBAL_ENV, KafkaSettings, Settings
from pipeline.devstack.kafka import free_port
from tests.docker_build import Dockerfile, context_files, parse_dockerfile

BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "cc ", "clang", "git", "curl", "wget")


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile()


def test_two_stages_on_slim_python_311_and_the_wheel_is_built_in_the_first(dockerfile: Dockerfile) -> None:
    assert len(dockerfile.stages) == 2
    build, final = dockerfile.stages
    for stage in (build, final):
        assert dockerfile.expand(stage.base).startswith("python:3.11-slim")
    assert build.name == "build"
    assert any("pip wheel" in run.args for run in build.all("RUN"))
    installs = " ".join(run.args for run in final.all("RUN"))
    assert "--no-index" in installs and "from=build,source=/wheels" in installs, "final stage installs only wheels"


def test_final_stage_has_no_build_tools_and_no_sources(dockerfile: Dockerfile) -> None:
    final = dockerfile.final
    for run in final.all("RUN"):
        assert "apt-get install" not in run.args, run.args
        for tool in BUILD_TOOLS:
            assert tool not in f"{run.args} ", f"{tool!r} in the final stage: {run.args}"
    for copy in final.all("COPY"):
        assert "--from=build" not in copy.args or "/wheels" in copy.args, copy.args
    assert not [c for c in final.all("COPY") if c.args.split()[0] in ("pipeline", "agents", ".")]


def test_runs_as_a_numeric_non_root_user(dockerfile: Dockerfile) -> None:
    user = dockerfile.final.last("USER")
    assert user is not None
    uid, _, gid = dockerfile.expand(user.args).partition(":")
    assert uid.isdigit() and int(uid) > 0, "Kubernetes runAsNonRoot can only verify a numeric user"
    assert gid.isdigit() and int(gid) > 0


def test_entry_point_is_pipeline_and_the_default_command_worker(dockerfile: Dockerfile) -> None:
    entrypoint, cmd = dockerfile.final.last("ENTRYPOINT"), dockerfile.final.last("CMD")
    assert entrypoint is not None and cmd is not None
    assert entrypoint.exec_form() == ["pipeline"]
    assert cmd.exec_form() == ["worker"]  # `docker run IMAGE` = `pipeline worker`; `IMAGE topics apply` too


def test_only_the_data_dir_needs_writing_and_env_names_are_settings(dockerfile: Dockerfile) -> None:
    env = dockerfile.final.env()
    data_env = _GLOBAL_ENV["data_dir"]
    assert env[data_env] == "/var/lib/pipeline"
    volume = dockerfile.final.last("VOLUME")
    assert volume is not None and volume.exec_form() == [env[data_env]]
    assert env["PYTHONDONTWRITEBYTECODE"] == "1", "a read-only root fs: no __pycache__ writes"
    known = set(_GLOBAL_ENV.values())
    for name in env:
        assert name in known or name.startswith("PYTHON") or name == "PATH", f"ENV {name} is no setting"
    assert env["WEB_HOST"] == "0.0.0.0", "probes and Prometheus reach the web server from outside the container"
    expose = dockerfile.final.last("EXPOSE")
    assert expose is not None and expose.args == env["WEB_PORT"] == str(Settings.model_fields["web_port"].default)
    assert KafkaSettings.model_fields  # the settings model imports (ENV names are checked against it)


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/health/live" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[int, type[_Health]]]:
    handler = type("Handler", (_Health,), {"status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


def _healthcheck(dockerfile: Dockerfile, port: int) -> int:
    check = dockerfile.final.last("HEALTHCHECK")
    assert check is not None
    argv = check.exec_form()
    assert argv is not None and argv[0] == "python", "exec form with the image's python (no shell, no curl)"
    env = {**os.environ, "WEB_PORT": str(port)}
    return subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30).returncode


def test_health_check_is_urllib_on_health_live_and_fails_unless_it_answers_2xx(
    dockerfile: Dockerfile, health_server: tuple[int, type[_Health]]
) -> None:
    check = dockerfile.final.last("HEALTHCHECK")
    assert check is not None and "urllib" in check.args and "/health/live" in check.args
    assert "curl" not in check.args and "wget" not in check.args
    port, handler = health_server
    assert _healthcheck(dockerfile, port) == 0
    handler.status = 503
    assert _healthcheck(dockerfile, port) != 0
    assert _healthcheck(dockerfile, free_port()) != 0  # nothing listening


def test_build_context_is_what_the_wheel_needs_and_nothing_else() -> None:
    files = set(context_files())
    for needed in ("pyproject.toml", "README.md", "pipeline/topics.yaml", "pipeline/py.typed", "agents/app.py"):
        assert needed in files, needed
    assert not [f for f in files if f.startswith(("tests/", "bench/", "helm/", "docs/", ".git", ".venv"))]
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    for copy in parse_dockerfile().stages[0].all("COPY"):
        *sources, _ = copy.args.split()
        for source in sources:
            assert source in files or any(f.startswith(source + "/") for f in files), f"COPY {source}: not in context"
