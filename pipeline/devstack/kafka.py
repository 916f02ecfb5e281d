"""A single-node Apache Kafka (KRaft) broker built from Maven Central jars.

No Docker and no Kafka tarball are needed: the broker's jars are fetched once with ``mvn`` into
``${PIPELINE_CACHE_DIR:-~/.cache/pipeline}/kafka/<version>/lib`` and the broker runs as a plain
``java`` process bound to 127.0.0.1 only.

Two ways to use it:

* :class:`KafkaBroker` owns one broker process (tests: ``start()`` ... ``stop()``);
* :func:`kafka_up` / :func:`kafka_down` / :func:`kafka_status` run it as a detached daemon whose
  pid, port and version are kept in a state file (the ``pipeline devstack kafka`` CLI).

Some helpers here (:func:`free_port`, :func:`file_lock`, :func:`terminate_pid`, ...) are shared with
:mod:`pipeline.devstack.postgres`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Coroutine, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "DEFAULT_DAEMON_PORT",
    "DEFAULT_KAFKA_VERSION",
    "SUPPORTED_KAFKA_VERSIONS",
    "DevstackError",
    "KafkaBroker",
    "KafkaStatus",
    "SaslSslListener",
    "cache_root",
    "default_kafka_state_dir",
    "docker_engine_available",
    "ensure_kafka_jars",
    "file_lock",
    "free_port",
    "kafka_down",
    "kafka_for_tests",
    "kafka_jars_cached",
    "kafka_status",
    "kafka_up",
    "log_tail",
    "pid_alive",
    "resolve_kafka_version",
    "state_root",
    "terminate_pid",
]

DEFAULT_KAFKA_VERSION = "3.9.2"
SUPPORTED_KAFKA_VERSIONS = ("3.9.2", "4.1.1")
DEFAULT_DAEMON_PORT = 9092
HOST = "127.0.0.1"

# Pinned so the fetch does not depend on whichever plugin version the local Maven defaults to.
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
_LOG4J2_VERSION = "2.24.3"
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
_STATE_FILE = "kafka.json"
# The image the Docker branch of kafka_for_tests uses (Confluent Platform 7.9 ships Apache Kafka 3.9).
_TESTCONTAINERS_IMAGE = "confluentinc/cp-kafka:7.9.0"

T = TypeVar("T")


CROWDED_PARTITIONS = 2000  # partition directories past which a slow start is worth a hint


class DevstackError(RuntimeError):
    """A devstack service could not be fetched, started, probed or stopped."""


# --------------------------------------------------------------------------------------------------
# Shared helpers (also used by pipeline.devstack.postgres)
# --------------------------------------------------------------------------------------------------


def cache_root() -> Path:
    """``$PIPELINE_CACHE_DIR`` or ``~/.cache/pipeline``: downloaded artefacts, outside the repo."""
    return Path(os.environ.get("PIPELINE_CACHE_DIR") or "~/.cache/pipeline").expanduser().absolute()


def state_root() -> Path:
    """``$PIPELINE_STATE_DIR`` or ``~/.local/state/pipeline``: where the devstack daemons live."""
    return Path(os.environ.get("PIPELINE_STATE_DIR") or "~/.local/state/pipeline").expanduser().absolute()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    """Whether something could listen on 127.0.0.1:``port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def tcp_accepts(port: int, timeout: float = 1.0) -> bool:
    """Whether 127.0.0.1:``port`` accepts a TCP connection."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``fcntl.flock`` on ``path`` (created if missing) for the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file (or a note that there is none)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else f"(log {path} is empty)"


def pid_alive(pid: int, cmdline_needle: str | None = None) -> bool:
    """Whether ``pid`` is a live (non-zombie) process, optionally whose command line contains a string.

    Reaps the process if it is an exited child of ours. The command-line check guards against
    the pid having been reused by an unrelated process after a crash.
    """
    if pid <= 0:
        return False
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    proc = Path("/proc") / str(pid)
    if not proc.is_dir():
        return True  # no procfs (not Linux): trust kill(0)
    try:
        stat = (proc / "stat").read_text()
        if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
            return False
        if cmdline_needle is not None:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            return cmdline_needle in cmdline
    except OSError:
        return False
    return True


def terminate_pid(pid: int, timeout: float = 30.0, cmdline_needle: str | None = None) -> None:
    """SIGTERM ``pid``, wait up to ``timeout`` seconds for it to exit, then SIGKILL it."""
    if not pid_alive(pid, cmdline_needle):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10.0
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def run_coroutine_in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a fresh event loop in a worker thread.

    Works whether or not the calling thread already has a (running) event loop, and never
    touches that loop.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="devstack-probe") as pool:
        return pool.submit(asyncio.run, coro).result()


def docker_engine_available(timeout: float = 3.0) -> bool:
    """Whether a Docker engine answers a ping (via the docker SDK, as testcontainers uses)."""
    if not os.environ.get("DOCKER_HOST"):
        sockets = [Path("/var/run/docker.sock")]
        if os.environ.get("XDG_RUNTIME_DIR"):
            sockets.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "docker.sock")
        if not any(sock.exists() for sock in sockets):
            return False  # fast path; also avoids the SDK leaking a socket on failure
    try:
        import docker
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def write_json_atomic(path: Path, data: dict[str, Any], mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.chmod(mode)
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --------------------------------------------------------------------------------------------------
# Jars
# --------------------------------------------------------------------------------------------------


def resolve_kafka_version(version: str | None = None) -> str:
    """``version``, else ``$KAFKA_VERSION``, else :data:`DEFAULT_KAFKA_VERSION`.

    Any ``X.Y.Z`` release published to Maven Central may be used; 3.9.2 and 4.1.1 are tested.
    """
    resolved = (version or os.environ.get("KAFKA_VERSION") or DEFAULT_KAFKA_VERSION).strip()
    if not _VERSION_RE.match(resolved):
        raise DevstackError(f"Kafka version must look like X.Y.Z (e.g. {DEFAULT_KAFKA_VERSION}), got {resolved!r}")
    return resolved


def _major(version: str) -> int:
    return int(version.split(".", 1)[0])


def _pom(version: str) -> str:
    deps = [("org.apache.kafka", "kafka_2.13", version)]
    if _major(version) >= 4:
        # Kafka 4 logs through the slf4j 1.7 API and ships log4j2; properties config needs no Jackson.
        deps += [
            ("org.apache.logging.log4j", "log4j-api", _LOG4J2_VERSION),
            ("org.apache.logging.log4j", "log4j-core", _LOG4J2_VERSION),
            ("org.apache.logging.log4j", "log4j-slf4j-impl", _LOG4J2_VERSION),
        ]
    else:
        deps += [("org.slf4j", "slf4j-reload4j", "1.7.36"), ("ch.qos.reload4j", "reload4j", "1.2.25")]
    dep_xml = "\n".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version></dependency>"
        for g, a, v in deps
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by pipeline.devstack.kafka: the runtime classpath of a Kafka {version} broker. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.pipeline.devstack</groupId>
  <artifactId>kafka-broker-{version}</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
{dep_xml}
  </dependencies>
</project>
"""


def _jars_complete(lib: Path, marker: Path) -> bool:
    info = read_json(marker)
    if info is None or not lib.is_dir():
        return False
    expected = info.get("jars")
    return isinstance(expected, int) and expected > 0 and len(list(lib.glob("*.jar"))) >= expected


def kafka_jars_cached(version: str | None = None) -> bool:
    """Whether :func:`ensure_kafka_jars` would return without running Maven."""
    root = cache_root() / "kafka" / resolve_kafka_version(version)
    return _jars_complete(root / "lib", root / ".complete")


def ensure_kafka_jars(version: str | None = None) -> Path:
    """Fetch the broker's runtime jars with ``mvn`` (once) and return the ``lib`` directory.

    Cached in ``cache_root()/kafka/<version>/lib``; a marker file written after a successful fetch
    makes later calls free. Concurrent callers serialise on a lock file, so racing processes
    fetch only once.
    """
    version = resolve_kafka_version(version)
    root = cache_root() / "kafka" / version
    lib, marker = root / "lib", root / ".complete"
    if _jars_complete(lib, marker):
        return lib
    with file_lock(root / ".lock"):
        if _jars_complete(lib, marker):
            return lib
        mvn = shutil.which("mvn")
        if mvn is None:
            raise DevstackError(
                "Maven (`mvn`) is needed to fetch the Kafka jars but is not on PATH; "
                "install it with e.g. `apt-get install maven openjdk-17-jdk-headless`."
            )
        pom = root / "pom.xml"
        pom.write_text(_pom(version))
        partial = root / "lib.partial"
        shutil.rmtree(partial, ignore_errors=True)
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            f"{_DEPENDENCY_PLUGIN}:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={partial}",
        ]
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        jars = sorted(partial.glob("*.jar")) if partial.is_dir() else []
        if proc.returncode != 0 or not jars:
            output = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            raise DevstackError(
                f"fetching Kafka {version} jars with Maven failed (exit {proc.returncode}, "
                f"{len(jars)} jars); command: {' '.join(cmd)}\n{output}"
            )
        shutil.rmtree(lib, ignore_errors=True)
        partial.rename(lib)
        write_json_atomic(
            marker,
            {"version": version, "jars": len(jars), "fetch_seconds": round(time.monotonic() - started, 1)},
        )
        return lib


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise DevstackError(
            "`java` (JDK/JRE 17+) is needed to run Kafka but is neither in $JAVA_HOME nor on PATH; "
            "install it with e.g. `apt-get install openjdk-17-jdk-headless`."
        )
    return java


def _kafka_uuid() -> str:
    """A random Kafka cluster id: 16 bytes, url-safe base64 without padding (what StorageTool prints)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):  # Kafka avoids ids that look like command-line flags
            return text


# --------------------------------------------------------------------------------------------------
# The broker
# --------------------------------------------------------------------------------------------------


SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class SaslSslListener:
    """A SASL_SSL listener next to the PLAINTEXT one, as managed Kafka services run them.

    ``keystore_pem`` holds the broker's private key (PKCS#8, unencrypted) and certificate chain; every
    user in ``users`` (name -> password) can log in with PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 (the
    SCRAM credentials are created when the storage is formatted, with the broker's own
    ``StorageTool format --add-scram``). With ``client_ca_pem`` the listener also requires a client
    certificate signed by that CA (mutual TLS). The PLAINTEXT listener stays for the inter-broker
    traffic and for test set-up.
    """

    keystore_pem: Path
    users: Mapping[str, str]
    client_ca_pem: Path | None = None
    port: int | None = None

    def properties(self) -> dict[str, str]:
        prefix = "listener.name.sasl_ssl."
        plain_users = " ".join(f'user_{name}="{password}"' for name, password in self.users.items())
        props = {
            f"{prefix}sasl.enabled.mechanisms": ",".join(SASL_MECHANISMS),
            f"{prefix}plain.sasl.jaas.config": f"org.apache.kafka.common.security.plain.PlainLoginModule "
            f"required {plain_users};",
            f"{prefix}scram-sha-256.sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule "
            "required;",
            f"{prefix}scram-sha-512.sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule "
            "required;",
            f"{prefix}ssl.keystore.type": "PEM",
            f"{prefix}ssl.keystore.location": str(self.keystore_pem),
        }
        if self.client_ca_pem is not None:
            props[f"{prefix}ssl.truststore.type"] = "PEM"
            props[f"{prefix}ssl.truststore.location"] = str(self.client_ca_pem)
            props[f"{prefix}ssl.client.auth"] = "required"
        return props

    def scram_arguments(self) -> list[str]:
        """``--add-scram`` arguments of ``StorageTool format`` for every user and SCRAM mechanism."""
        args: list[str] = []
        for name, password in self.users.items():
            for mechanism in SASL_MECHANISMS[1:]:
                args += ["--add-scram", f"{mechanism}=[name={name},password={password}]"]
        return args


class KafkaBroker:
    """One single-node KRaft broker+controller process on 127.0.0.1.

    ``state_dir`` holds the generated config, the cluster id, the broker log (``broker.log``) and
    the data (``data-<version>``; storage is formatted once per state dir and version).
    """

    def __init__(
        self,
        *,
        version: str | None = None,
        state_dir: Path,
        port: int | None = None,
        controller_port: int | None = None,
        heap: str = "512m",
        sasl_ssl: SaslSslListener | None = None,
    ) -> None:
        self.version = resolve_kafka_version(version)
        self.state_dir = Path(state_dir).expanduser().absolute()
        self.port = port if port is not None else free_port()
        self.controller_port = controller_port if controller_port is not None else free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()
        self.heap = heap
        self.sasl_ssl = sasl_ssl
        self.sasl_ssl_port: int | None = None
        if sasl_ssl is not None:
            self.sasl_ssl_port = sasl_ssl.port or free_port()
            while self.sasl_ssl_port in (self.port, self.controller_port):
                self.sasl_ssl_port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None  # when the broker is our child
        self._daemon_pid: int | None = None  # when it was started detached

    # -- paths ---------------------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def sasl_ssl_bootstrap(self) -> str:
        """The SASL_SSL listener's address (only with ``sasl_ssl``)."""
        if self.sasl_ssl_port is None:
            raise DevstackError("this broker has no SASL_SSL listener")
        return f"{HOST}:{self.sasl_ssl_port}"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "broker.log"

    @property
    def config_file(self) -> Path:
        return self.state_dir / "server.properties"

    @property
    def data_dir(self) -> Path:
        return self.state_dir / f"data-{self.version}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else self._daemon_pid

    # -- lifecycle -----------------------------------------------------------------------------
    def ensure_jars(self) -> Path:
        return ensure_kafka_jars(self.version)

    def is_running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self._daemon_pid is not None and pid_alive(self._daemon_pid, str(self.config_file))

    def _crowded_hint(self) -> str:
        """Why a broker may start slowly: every partition directory is loaded at start (test runs against
        a kept broker leave thousands)."""
        try:
            partitions = sum(1 for entry in self.data_dir.iterdir() if entry.is_dir())
        except OSError:
            return ""
        if partitions < CROWDED_PARTITIONS:
            return ""
        return (
            f"; its data directory holds {partitions:,} partition directories, which it loads at start: "
            "`pipeline devstack kafka down --wipe` starts it empty, or give --timeout more time"
        )

    def start(self, timeout: float = 90.0, *, detach: bool = False) -> str:
        """Start the broker and wait until it serves metadata; return the bootstrap address.

        By default the broker is a child process of this one (in its process group, so a
        terminal's Ctrl-C reaches it too). ``detach=True`` starts it as a daemon instead: in a new
        session and not our child (launched through ``sh``, as ``pg_ctl`` does), so it outlives this
        process and needs no reaping. On failure the process is stopped and a
        :class:`DevstackError` with the end of the broker log is raised.
        """
        if self.is_running():
            return self.bootstrap
        deadline = time.monotonic() + timeout
        lib = self.ensure_jars()
        for port in (self.port, self.controller_port, self.sasl_ssl_port):
            if port is not None and not port_is_free(port):
                raise DevstackError(f"cannot start Kafka: port {HOST}:{port} is already in use")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log_opt = self._write_config()
        java = _java()
        classpath = f"{lib}{os.sep}*"
        self._format_storage(java, classpath, log_opt)
        cmd = [
            java,
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            log_opt,
            "-cp",
            classpath,
            "kafka.Kafka",
            str(self.config_file),
        ]
        if detach:
            self._daemon_pid = self._launch_detached(cmd)
        else:
            with open(self.log_file, "wb") as log:
                self._proc = subprocess.Popen(
                    cmd, cwd=self.state_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
                )
        try:
            self._wait_ready(deadline, timeout)
        except BaseException:
            self.stop()
            raise
        return self.bootstrap

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the broker, wait up to ``timeout`` s for a clean shutdown, then SIGKILL it."""
        proc, self._proc = self._proc, None
        daemon_pid, self._daemon_pid = self._daemon_pid, None
        if daemon_pid is not None:
            terminate_pid(daemon_pid, timeout, str(self.config_file))
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def __enter__(self) -> KafkaBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals -----------------------------------------------------------------------------
    def _write_config(self) -> str:
        """Write server.properties and the logging config; return the JVM logging flag."""
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{HOST}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "log.retention.check.interval.ms": "10000",
        }
        if self.sasl_ssl is not None and self.sasl_ssl_port is not None:
            listener = f"SASL_SSL://{HOST}:{self.sasl_ssl_port}"
            props["listeners"] += f",{listener}"
            props["advertised.listeners"] += f",{listener}"
            props["listener.security.protocol.map"] += ",SASL_SSL:SASL_SSL"
            props.update(self.sasl_ssl.properties())
        if _major(self.version) >= 4:
            props["share.coordinator.state.topic.replication.factor"] = "1"
            props["share.coordinator.state.topic.min.isr"] = "1"
        self.config_file.write_text(
            "# Generated by pipeline.devstack.kafka; rewritten on every start.\n"
            + "".join(f"{k}={v}\n" for k, v in props.items())
        )
        pattern = "[%d] %p %m (%c)%n"
        if _major(self.version) >= 4:
            path = self.state_dir / "log4j2.properties"
            path.write_text(
                "status = warn\n"
                "shutdownHook = disable\n"
                "appender.console.type = Console\n"
                "appender.console.name = STDOUT\n"
                "appender.console.layout.type = PatternLayout\n"
                f"appender.console.layout.pattern = {pattern}\n"
                "rootLogger.level = warn\n"
                "rootLogger.appenderRef.stdout.ref = STDOUT\n"
                "logger.raftserver.name = kafka.server.KafkaRaftServer\n"
                "logger.raftserver.level = info\n"
            )
            return f"-Dlog4j2.configurationFile={path}"
        path = self.state_dir / "log4j.properties"
        path.write_text(
            "log4j.rootLogger=WARN, stdout\n"
            "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
            "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
            f"log4j.appender.stdout.layout.ConversionPattern={pattern}\n"
            "log4j.logger.kafka.server.KafkaRaftServer=INFO\n"
        )
        return f"-Dlog4j.configuration={path.as_uri()}"

    def _launch_detached(self, cmd: list[str]) -> int:
        """Start ``cmd`` in the background of a short-lived ``sh`` in a new session; return its pid."""
        script = 'exec "$@" > "$PIPELINE_KAFKA_LOG" 2>&1 < /dev/null &\necho $!'
        proc = subprocess.run(
            ["/bin/sh", "-c", script, "sh", *cmd],
            cwd=self.state_dir,
            env={**os.environ, "PIPELINE_KAFKA_LOG": str(self.log_file)},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            start_new_session=True,
            check=False,
        )
        try:
            return int(proc.stdout.strip())
        except ValueError:
            raise DevstackError(f"could not launch Kafka: {proc.stderr.strip() or proc.stdout.strip()}") from None

    def _format_storage(self, java: str, classpath: str, log_opt: str) -> None:
        if (self.data_dir / "meta.properties").is_file():
            return
        id_file = self.state_dir / "cluster.id"
        cluster_id = id_file.read_text().strip() if id_file.is_file() else ""
        if not cluster_id:
            cluster_id = _kafka_uuid()
            id_file.write_text(cluster_id + "\n")
        cmd = [java, log_opt, "-cp", classpath, "kafka.tools.StorageTool", "format"]
        cmd += ["-t", cluster_id, "-c", str(self.config_file), "--ignore-formatted"]
        if self.sasl_ssl is not None:
            cmd += self.sasl_ssl.scram_arguments()
        proc = subprocess.run(cmd, cwd=self.state_dir, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise DevstackError(
                f"formatting Kafka storage in {self.data_dir} failed (exit {proc.returncode}):\n"
                + "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            )

    def _wait_ready(self, deadline: float, timeout: float) -> None:
        last_error = "the port never accepted a connection"
        while True:
            if not self.is_running():
                code = self._proc.returncode if self._proc is not None else "unknown"
                raise DevstackError(
                    f"Kafka {self.version} exited (code {code}) during startup; "
                    f"last lines of {self.log_file}:\n{log_tail(self.log_file)}"
                )
            if tcp_accepts(self.port):
                probe_timeout = max(1.0, min(10.0, deadline - time.monotonic()))
                error = run_coroutine_in_thread(_probe_metadata(self.bootstrap, probe_timeout))
                if error is None:
                    return
                last_error = error
            if time.monotonic() >= deadline:
                raise DevstackError(
                    f"Kafka {self.version} on {self.bootstrap} was not ready within {timeout:.0f}s "
                    f"({last_error}){self._crowded_hint()}; last lines of {self.log_file}:\n"
                    f"{log_tail(self.log_file)}"
                )
            time.sleep(0.2)  # poll interval, not a wait-for-readiness sleep


async def _probe_metadata(bootstrap: str, budget_s: float) -> str | None:
    """One admin metadata request; None when it succeeded, else a description of the failure."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="pipeline-devstack-probe",
        request_timeout_ms=int(budget_s * 1000),
    )
    try:
        async with asyncio.timeout(budget_s):
            await admin.start()
            await admin.list_topics()
    except Exception as exc:
        return f"metadata request failed: {type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    return None


# --------------------------------------------------------------------------------------------------
# Daemon mode (pipeline devstack kafka up|down|status)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaStatus:
    running: bool
    state_dir: Path
    pid: int | None = None
    bootstrap: str | None = None
    version: str | None = None
    log_file: Path | None = None


def default_kafka_state_dir() -> Path:
    return state_root() / "kafka"


def kafka_status(state_dir: Path | None = None) -> KafkaStatus:
    """Whether the daemon recorded in ``state_dir`` (default: the daemon state dir) is running."""
    state_dir = Path(state_dir or default_kafka_state_dir()).expanduser().absolute()
    info = read_json(state_dir / _STATE_FILE)
    if info is None:
        return KafkaStatus(running=False, state_dir=state_dir)
    pid = int(info.get("pid", 0))
    running = pid_alive(pid, str(state_dir / "server.properties"))
    return KafkaStatus(
        running=running,
        state_dir=state_dir,
        pid=pid if running else None,
        bootstrap=str(info.get("bootstrap")) if running else None,
        version=str(info.get("version")),
        log_file=state_dir / "broker.log",
    )


def kafka_up(
    *,
    state_dir: Path | None = None,
    version: str | None = None,
    port: int = DEFAULT_DAEMON_PORT,
    controller_port: int | None = None,
    timeout: float = 90.0,
) -> tuple[KafkaStatus, bool]:
    """Start a detached broker unless one is already running; return (status, started_now)."""
    state_dir = Path(state_dir or default_kafka_state_dir()).expanduser().absolute()
    state_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(state_dir / ".lock"):
        status = kafka_status(state_dir)
        if status.running:
            return status, False
        broker = KafkaBroker(version=version, state_dir=state_dir, port=port, controller_port=controller_port)
        broker.start(timeout, detach=True)
        info = {
            "pid": broker.pid,
            "port": broker.port,
            "controller_port": broker.controller_port,
            "bootstrap": broker.bootstrap,
            "version": broker.version,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json_atomic(state_dir / _STATE_FILE, info)
        return kafka_status(state_dir), True


def kafka_down(state_dir: Path | None = None, timeout: float = 30.0, *, wipe: bool = False) -> KafkaStatus:
    """Stop the daemon recorded in ``state_dir``; return its status from before the stop. With `wipe`, also
    delete its data (every version's): the next `up` formats empty storage."""
    state_dir = Path(state_dir or default_kafka_state_dir()).expanduser().absolute()
    if not state_dir.is_dir():
        return KafkaStatus(running=False, state_dir=state_dir)
    with file_lock(state_dir / ".lock"):
        status = kafka_status(state_dir)
        if status.running and status.pid is not None:
            terminate_pid(status.pid, timeout, str(state_dir / "server.properties"))
            if pid_alive(status.pid):
                raise DevstackError(f"Kafka (pid {status.pid}) did not exit")
        with contextlib.suppress(FileNotFoundError):
            (state_dir / _STATE_FILE).unlink()
        if wipe:
            for data in state_dir.glob("data-*"):
                shutil.rmtree(data, ignore_errors=True)
        return status


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def kafka_for_tests(base_dir: Path, *, version: str | None = None, timeout: float = 120.0) -> Iterator[str]:
    """Yield a bootstrap address for a test session, cleaning up afterwards.

    In order: ``$KAFKA_BOOTSTRAP_SERVERS``; else a testcontainers Kafka when a Docker engine
    answers (Kafka 3.9 image; skipped when a 4.x version is requested); else a
    :class:`KafkaBroker` in ``base_dir`` on free ports (version: ``version``/``$KAFKA_VERSION``).
    """
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    resolved = resolve_kafka_version(version)
    if _major(resolved) < 4 and docker_engine_available():
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:  # testcontainers < 4.10
            from testcontainers.kafka import KafkaContainer

        container = KafkaContainer(_TESTCONTAINERS_IMAGE).with_kraft()
        for key, value in {
            "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
            "KAFKA_LOG_RETENTION_CHECK_INTERVAL_MS": "10000",
        }.items():
            container.with_env(key, value)
        container.start(timeout=int(timeout))
        try:
            yield str(container.get_bootstrap_server())
        finally:
            container.stop()
        return
    broker = KafkaBroker(version=resolved, state_dir=base_dir)
    broker.start(timeout)
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
