"""One settings model for the whole pipeline: a YAML file (PIPELINE_CONFIG) plus environment overrides.

Precedence, highest first, for every sink setting:
    per-sink env (TSDB_MAX_RETRIES) > default env (SINK_DEFAULT_MAX_RETRIES, QUEUE_MAX_BYTES)
    > file (sinks.tsdb.retry.max_retries, then sink_defaults.retry.max_retries) > built-in default.
Global settings: env (KAFKA_BOOTSTRAP_SERVERS, INGEST_TOPIC, ...) > file > built-in default.

Every value remembers where it came from, so `pipeline config show` can print its source and a bad value
fails at start naming the setting, its env variable or file line, and the reason.
"""

from __future__ import annotations

import difflib
import os
import re
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import MarkedYAMLError

from pipeline.redact import MASK, mask_url, redact
from pipeline.reliability.presets import preset_layer
from pipeline.sinks.registry import BUILTIN_SINKS, sink_types
from pipeline.sinks.settings import SinkSettings
from pipeline.topics import SinkTopicVars, TopicVars

CONFIG_ENV = "PIPELINE_CONFIG"


class ConfigError(ValueError):
    """A setting is missing or invalid. The message names the setting and where its value came from."""


DEFAULT_KAFKA_PORT = 9092  # what aiokafka connects to for a server given without a port


def _split_server(server: str) -> tuple[str, str | None]:
    """(host, port text) of `host:port`; (server, None) without a colon."""
    host, sep, port = server.rpartition(":")
    return (host, port) if sep else (server, None)


class KafkaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "pipeline"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = Field(
        None, description="a mounted file holding the SASL password (instead of sasl_password); read at each start"
    )
    ssl_cafile: Path | None = Field(None, description="PEM CA bundle that signed the brokers' certificates")
    ssl_certfile: Path | None = Field(None, description="PEM client certificate (chain) for mutual TLS")
    ssl_keyfile: Path | None = Field(None, description="PEM private key of ssl_certfile (if not inside it)")
    ssl_key_password: SecretStr | None = None
    ssl_key_password_file: Path | None = None
    ssl_check_hostname: bool = Field(True, description="verify the broker's certificate names its host")
    group_instance_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="static group membership (KIP-345): a stable id per worker, e.g. the StatefulSet pod name, "
        "so a restart within session_timeout_ms does not rebalance",
    )
    # Kafka's default group.min.session.timeout.ms and group.max.session.timeout.ms: outside them the broker
    # refuses the consumer's join.
    session_timeout_ms: int = Field(
        10_000, ge=6_000, le=1_800_000, description="a dead worker's partitions move after this (6 s to 30 min)"
    )
    heartbeat_interval_ms: int = Field(3_000, ge=100, le=600_000, description="below session_timeout_ms")
    produce_flush_interval_ms: int = Field(
        50,
        ge=0,
        le=1_000,
        description="least time between two flushes of the ingest and dedupe producer: under load the records "
        "of one interval share a request; a record that finds the producer idle goes at once",
    )
    compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "none",
        description="compression of every record batch the pipeline produces (topics keep the producer's with "
        "Kafka's default compression.type=producer): lz4 wrote 3.3 times fewer bytes to the broker than none, "
        "zstd 4.9 times fewer, for about 5% more worker CPU (and the broker's, which decompresses to validate)",
    )
    topic_partitions: int | None = Field(None, ge=1, description="overrides topics.yaml defaults.partitions")
    replication_factor: int | None = Field(None, ge=1, description="overrides defaults.replication_factor")

    @field_validator("bootstrap_servers")
    @classmethod
    def _bootstrap_servers(cls, value: str) -> str:
        servers = [server.strip() for server in value.split(",") if server.strip()]
        if not servers:
            raise ValueError("must list at least one broker as host:port, e.g. kafka-1:9092,kafka-2:9092")
        for server in servers:
            host, port = _split_server(server)
            if port is not None and (not host or not port.isdigit() or not 1 <= int(port) <= 65535):
                raise ValueError(f"{server!r} is not host:port with a port from 1 to 65535")
        return value

    @model_validator(mode="after")
    def _heartbeat_below_session_timeout(self) -> KafkaSettings:
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError(
                f"kafka.heartbeat_interval_ms ({self.heartbeat_interval_ms}) must be lower than "
                f"kafka.session_timeout_ms ({self.session_timeout_ms}); Kafka advises at most a third of it"
            )
        return self

    @model_validator(mode="after")
    def _security_consistent(self) -> KafkaSettings:
        sasl = self.security_protocol.startswith("SASL_")
        tls = self.security_protocol.endswith("SSL")
        if sasl and not self.sasl_mechanism:
            raise ValueError(
                f"kafka.security_protocol is {self.security_protocol}: set kafka.sasl_mechanism "
                "(KAFKA_SASL_MECHANISM: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
            )
        if self.sasl_mechanism and not sasl:
            raise ValueError(
                f"kafka.sasl_mechanism is set but kafka.security_protocol is {self.security_protocol}: "
                "use SASL_SSL (or SASL_PLAINTEXT on a trusted network)"
            )
        if sasl and not self.sasl_username:
            raise ValueError("kafka.sasl_username (KAFKA_SASL_USERNAME) is required with SASL")
        for secret, file in (("sasl_password", "sasl_password_file"), ("ssl_key_password", "ssl_key_password_file")):
            if getattr(self, secret) is not None and getattr(self, file) is not None:
                raise ValueError(f"set kafka.{secret} or kafka.{file}, not both")
        if sasl and self.sasl_password is None and self.sasl_password_file is None:
            raise ValueError(
                "kafka.sasl_password (KAFKA_SASL_PASSWORD) or kafka.sasl_password_file (KAFKA_SASL_PASSWORD_FILE) "
                "is required with SASL"
            )
        tls_files = ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password", "ssl_key_password_file")
        stray = [name for name in tls_files if getattr(self, name) is not None]
        if stray and not tls:
            raise ValueError(
                f"kafka.{stray[0]} is set but kafka.security_protocol is {self.security_protocol}, which does not "
                "use TLS: use SSL or SASL_SSL"
            )
        if (self.ssl_keyfile or self.ssl_key_password or self.ssl_key_password_file) and not self.ssl_certfile:
            raise ValueError("kafka.ssl_keyfile and its password need kafka.ssl_certfile (the client certificate)")
        for name in ("sasl_password_file", "ssl_key_password_file", *tls_files[:3]):
            path = getattr(self, name)
            if path is not None and not os.access(path, os.R_OK):
                raise ValueError(f"kafka.{name}: cannot read {path}")
        return self

    @property
    def servers(self) -> list[str]:
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]

    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of each server; a server without a port is port 9092, as aiokafka's clients read it."""
        out = []
        for server in self.servers:
            host, port = _split_server(server)
            out.append((host, int(port)) if port is not None else (server, DEFAULT_KAFKA_PORT))
        return out

    def sasl_password_value(self) -> str | None:
        """The SASL password: the value, or the mounted file's content without its trailing newline."""
        return _secret_value(self.sasl_password, self.sasl_password_file, "sasl_password_file")

    def file_secrets(self) -> list[str]:
        """Secrets read from mounted files (not in the model, so the redactor is told of them)."""
        found = [
            _secret_value(None, self.sasl_password_file, "sasl_password_file"),
            _secret_value(None, self.ssl_key_password_file, "ssl_key_password_file"),
        ]
        return [value for value in found if value]

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for SSL and SASL_SSL: CA bundle (system CAs when unset), optional client
        certificate for mutual TLS, hostname check. None for the plain-text protocols."""
        if not self.security_protocol.endswith("SSL"):
            return None
        context = ssl.create_default_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)
        context.check_hostname = self.ssl_check_hostname
        if self.ssl_certfile is not None:
            context.load_cert_chain(
                str(self.ssl_certfile),
                keyfile=str(self.ssl_keyfile) if self.ssl_keyfile else None,
                password=_secret_value(self.ssl_key_password, self.ssl_key_password_file, "ssl_key_password_file"),
            )
        return context

    def client_kwargs(self) -> dict[str, Any]:
        """The security keyword arguments of every Kafka client the pipeline opens (aiokafka's producer,
        consumer and admin client; the Faust app through `faust_credentials`): the one place where the
        protocol, SASL credentials and TLS settings are applied."""
        kwargs: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password_value()
        context = self.ssl_context()
        if context is not None:
            kwargs["ssl_context"] = context
        return kwargs

    def faust_credentials(self) -> Any:
        """`client_kwargs` as Faust's broker_credentials (None for PLAINTEXT)."""
        import faust

        kwargs = self.client_kwargs()
        if "sasl_mechanism" in kwargs:
            return faust.SASLCredentials(
                username=kwargs["sasl_plain_username"],
                password=kwargs["sasl_plain_password"],
                ssl_context=kwargs.get("ssl_context"),
                mechanism=kwargs["sasl_mechanism"],
            )
        return faust.SSLCredentials(kwargs["ssl_context"]) if "ssl_context" in kwargs else None

    def compression_codec(self) -> str | None:
        """`compression_type` as Kafka clients take it (aiokafka's and Faust's producers: None for none)."""
        return None if self.compression_type == "none" else self.compression_type

    def admin_kwargs(self) -> dict[str, Any]:
        return {"client_id": f"{self.client_id}-admin", **self.client_kwargs()}

    def member_instance_id(self, role: str) -> str | None:
        """The static group member id of one of this worker's consumer groups (None without
        group_instance_id): the Faust app's is group_instance_id itself, a delivery group's adds its role."""
        if self.group_instance_id is None:
            return None
        return self.group_instance_id if role == "app" else f"{self.group_instance_id}-{role}"


def _secret_value(value: SecretStr | None, file: Path | None, name: str) -> str | None:
    if value is not None:
        return value.get_secret_value()
    if file is None:
        return None
    try:
        return file.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"kafka.{name}: cannot read {file}: {exc.strerror}") from None


class Settings(BaseSettings):
    """The effective configuration. Build it with `load_settings()`; constructing it directly skips the
    env/file layering (useful in tests and embedding)."""

    model_config = SettingsConfigDict(extra="forbid", validate_default=True)

    app_id: str = Field("pipeline", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    data_dir: Path = Path(".data")
    ingest_topic: str = Field("events.ingest", pattern=r"^[A-Za-z0-9._-]+$")
    topic_prefix: str = Field("", pattern=r"^[A-Za-z0-9._-]*$")
    topics_file: Path | None = None
    topics_auto_apply: bool = True
    max_event_bytes: int = Field(1_048_576, ge=64, le=64 * 1_048_576)
    idempotency_window_sec: int = Field(86_400, ge=1)
    deployment_profile: str | None = Field(None, description="satcom | at-sea | remote-edge | multi-cloud")
    # Records per fetch handed to the ingest and dedupe agents as batches (Faust's broker_max_poll_records).
    ingest_batch_size: int = Field(2000, ge=1, le=10_000)
    # RocksDB of the dedupe table, per partition: block cache and memtable (write buffer) size; at most two
    # write buffers each. Sized for small hosts: 6 partitions take at most 6 * (8 + 2 * 8) MiB.
    dedupe_block_cache_bytes: int = Field(8 * 1_048_576, ge=1_048_576)
    dedupe_write_buffer_bytes: int = Field(8 * 1_048_576, ge=1_048_576)
    # Workers that keep a warm copy of each dedupe partition (Faust's table_standby_replicas; Faust's default
    # is 1, Kafka Streams' num.standby.replicas 0). A standby applies another worker's changelog all the
    # time: with 2-3 workers it doubled the CPU per event (bench scaleout). With none, a partition that moves
    # to another worker is restored from its (compacted) changelog before it is processed: its events wait in
    # Kafka meanwhile. A restarted pod keeps its own state on its volume either way.
    dedupe_standby_replicas: int = Field(0, ge=0, le=8)
    # Allocations between two generation-0 passes of Python's cyclic garbage collector in a worker (CPython's
    # default is 700; 0 keeps the defaults). See pipeline.gc_tuning.
    gc_gen0_threshold: int = Field(50_000, ge=0, le=10_000_000)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    web_enabled: bool = Field(True, description="serve /metrics, /health/*, admin and POST /ingest")
    web_host: str = Field("127.0.0.1", min_length=1, description="0.0.0.0 for Prometheus and the kubelet")
    web_port: int = Field(6066, ge=1, le=65535)
    web_allow_unauthenticated: bool = Field(
        False, description="serve POST /ingest without INGEST_TOKEN on a non-loopback WEB_HOST"
    )
    admin_token: SecretStr | None = Field(None, description="bearer token of /admin/*; admin is off when unset")
    ingest_token: SecretStr | None = Field(None, description="bearer token of POST /ingest")
    ingest_http_enabled: bool = Field(True, description="serve POST /ingest")
    ingest_http_max_request_bytes: int = Field(16 * 1_048_576, ge=1024, description="one POST /ingest body")
    ingest_http_timeout_sec: float = Field(10.0, gt=0, le=300, description="broker acknowledgement, else 503")
    ingest_rate_limit_per_sec: float = Field(0.0, ge=0, description="events per second per client; 0 = off")
    ingest_rate_limit_burst: int | None = Field(None, ge=1, description="bucket size (default: one second)")
    metrics_interval_sec: float = Field(10.0, ge=0.5, le=3600, description="lag/backlog collector period")
    health_timeout_sec: float = Field(2.0, gt=0, le=60, description="each check of /health/detailed")
    strict_config: bool = Field(False, description="an env variable with a sink's prefix that is no setting fails")
    dlq_replay_max: int = Field(
        3, ge=0, le=1000, description="times `dlq replay` replays one event; past it the event is parked"
    )
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    sinks: dict[str, SinkSettings] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The layering (file, default env, per-sink env) is done by `load_settings`, which needs to know
        # where each value came from; the model itself only validates what it is given.
        return (init_settings,)

    def enabled_sinks(self) -> list[SinkSettings]:
        return [s for s in self.sinks.values() if s.enabled]

    def topics_path(self) -> Path:
        """TOPICS_FILE (env or file) when set, else the catalog shipped in the package."""
        from pipeline.topics import default_topics_path

        return self.topics_file or default_topics_path()

    def topic_vars(self) -> TopicVars:
        from pipeline.limits import message_bytes_vars
        from pipeline.reliability.policies import tier_label

        return TopicVars(
            ingest_topic=self.ingest_topic,
            app_id=self.app_id,
            sinks=tuple(
                SinkTopicVars(
                    name=s.name,
                    retry_tiers=tuple(tier_label(d) for d in s.retry.tier_delays_ms()),
                    queue_max_bytes=s.queue.max_bytes if s.queue.enabled else None,
                )
                for s in self.enabled_sinks()
            ),
            prefix=self.topic_prefix,
            idempotency_window_ms=self.idempotency_window_sec * 1000,
            partitions=self.kafka.topic_partitions,
            replication_factor=self.kafka.replication_factor,
            **message_bytes_vars(self.max_event_bytes),
        )

    def check_runnable(self, provenance: Provenance | None = None) -> None:
        """What a worker needs beyond valid values: at least one sink, each enabled sink complete, and no
        unauthenticated write endpoint on a non-loopback address."""
        self.check_web_exposure()
        enabled = self.enabled_sinks()
        if not enabled:
            raise ConfigError("no sink is enabled: enable one, e.g. TSDB_ENABLED=true with TSDB_DSN=postgresql://...")
        for sink in enabled:
            try:
                sink_types()[sink.type].load()
            except (ImportError, AttributeError, TypeError) as exc:
                raise ConfigError(
                    f"sink {sink.name!r} has type {sink.type!r}, which cannot be loaded ({exc}); disable it with "
                    f"{env_prefix(sink.name)}_ENABLED=false"
                ) from None
            try:
                sink.require_runnable()
            except ValueError as exc:
                setting = str(exc).split(" ", 1)[0]
                raise ConfigError(
                    f"sinks.{sink.name}.{setting} (env {env_prefix(sink.name)}_{setting.upper()}): {exc} "
                    f"(sink {sink.name!r}; set {env_prefix(sink.name)}_ENABLED=false to turn it off)"
                ) from None

    def check_web_exposure(self) -> None:
        """POST /ingest on a non-loopback WEB_HOST needs INGEST_TOKEN (or WEB_ALLOW_UNAUTHENTICATED=true).
        Admin needs no check: it is off without ADMIN_TOKEN."""
        if not self.web_enabled or not self.ingest_http_enabled or self.ingest_token is not None:
            return
        if self.web_allow_unauthenticated or is_loopback(self.web_host):
            return
        raise ConfigError(
            f"web_host (env WEB_HOST) is {self.web_host!r}, not a loopback address, and POST /ingest has no token: "
            "set INGEST_TOKEN, or INGEST_HTTP_ENABLED=false, or WEB_ALLOW_UNAUTHENTICATED=true to serve it to anyone"
        )


def is_loopback(host: str) -> bool:
    """Whether a bind address only listens on this machine (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------------
# Where each value came from


@dataclass
class Provenance:
    """dotted setting path -> human-readable source ("env TSDB_DSN", "config.yaml:12", "default")."""

    sources: dict[str, str] = field(default_factory=dict)
    env_values: dict[str, str] = field(default_factory=dict)
    # Problems that do not stop the start (errors with STRICT_CONFIG=true), e.g. a misspelt env variable.
    warnings: list[str] = field(default_factory=list)

    def source_of(self, path: str) -> str:
        return self.sources.get(path, "default")


def env_prefix(sink_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", sink_name).upper()


_GLOBAL_ENV: dict[str, str] = {
    "app_id": "PIPELINE_APP_ID",
    "data_dir": "PIPELINE_DATA_DIR",
    "ingest_topic": "INGEST_TOPIC",
    "topic_prefix": "TOPIC_PREFIX",
    "topics_file": "TOPICS_FILE",
    "topics_auto_apply": "TOPICS_AUTO_APPLY",
    "max_event_bytes": "INGEST_MAX_EVENT_BYTES",
    "idempotency_window_sec": "IDEMPOTENCY_WINDOW_SEC",
    "deployment_profile": "DEPLOYMENT_PROFILE",
    "ingest_batch_size": "INGEST_BATCH_SIZE",
    "dedupe_block_cache_bytes": "DEDUPE_BLOCK_CACHE_BYTES",
    "dedupe_write_buffer_bytes": "DEDUPE_WRITE_BUFFER_BYTES",
    "dedupe_standby_replicas": "DEDUPE_STANDBY_REPLICAS",
    "gc_gen0_threshold": "GC_GEN0_THRESHOLD",
    "log_level": "LOG_LEVEL",
    "log_format": "LOG_FORMAT",
    "web_enabled": "WEB_ENABLED",
    "web_host": "WEB_HOST",
    "web_port": "WEB_PORT",
    "web_allow_unauthenticated": "WEB_ALLOW_UNAUTHENTICATED",
    "admin_token": "ADMIN_TOKEN",
    "ingest_token": "INGEST_TOKEN",
    "ingest_http_enabled": "INGEST_HTTP_ENABLED",
    "ingest_http_max_request_bytes": "INGEST_HTTP_MAX_REQUEST_BYTES",
    "ingest_http_timeout_sec": "INGEST_HTTP_TIMEOUT_SEC",
    "ingest_rate_limit_per_sec": "INGEST_RATE_LIMIT_PER_SEC",
    "ingest_rate_limit_burst": "INGEST_RATE_LIMIT_BURST",
    "metrics_interval_sec": "METRICS_INTERVAL_SEC",
    "health_timeout_sec": "HEALTH_TIMEOUT_SEC",
    "strict_config": "STRICT_CONFIG",
    "dlq_replay_max": "DLQ_REPLAY_MAX",
}
_GLOBAL_ENV.update({f"kafka.{name}": f"KAFKA_{name.upper()}" for name in KafkaSettings.model_fields})

# Env suffixes of nested sink groups. The queue group keeps the seeds' QUEUE_ infix (TSDB_QUEUE_MAX_BYTES);
# retry and breaker leaves are flat (TSDB_MAX_RETRIES, TSDB_FAILURE_THRESHOLD) as in the seeds.
_GROUP_INFIX = {"retry": "", "circuit_breaker": "", "queue": "QUEUE_"}
_SUFFIX_OVERRIDES = {("circuit_breaker", "enabled"): "BREAKER_ENABLED"}
_NOT_FROM_ENV = {"name", "type"}


@dataclass(frozen=True)
class SinkLeaf:
    """One setting of a sink: its path inside the sink and the env suffix that sets it."""

    path: tuple[str, ...]
    suffix: str
    defaultable: bool  # exists on every sink, so SINK_DEFAULT_<suffix> applies


def sink_leaves(model: type[SinkSettings]) -> list[SinkLeaf]:
    leaves: list[SinkLeaf] = []
    base_fields = set(SinkSettings.model_fields)
    for name, info in model.model_fields.items():
        if name in _NOT_FROM_ENV:
            continue
        key = info.alias or name
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for leaf in annotation.model_fields:
                suffix = _SUFFIX_OVERRIDES.get((name, leaf), f"{_GROUP_INFIX[name]}{leaf.upper()}")
                leaves.append(SinkLeaf((key, leaf), suffix, name in base_fields))
        else:
            leaves.append(SinkLeaf((key,), key.upper(), name in base_fields))
    suffixes = [leaf.suffix for leaf in leaves]
    assert len(suffixes) == len(set(suffixes)), f"env suffix collision in {model.__name__}"
    return leaves


# --------------------------------------------------------------------------------------------------
# Loading


def load_settings(config_file: Path | str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    return load_settings_with_provenance(config_file, environ)[0]


def load_settings_with_provenance(
    config_file: Path | str | None = None, environ: Mapping[str, str] | None = None
) -> tuple[Settings, Provenance]:
    env = dict(os.environ if environ is None else environ)
    path = Path(config_file) if config_file else (Path(env[CONFIG_ENV]) if env.get(CONFIG_ENV) else None)
    file_data, file_lines = _read_config_file(path) if path else ({}, {})
    prov = Provenance()
    raw: dict[str, Any] = {}

    known_top = set(Settings.model_fields) | {"sink_defaults"}
    for key in file_data:
        if key not in known_top:
            raise ConfigError(f"{_where(path, file_lines, (key,))}: unknown setting {key!r}{_suggest(key, known_top)}")

    # Global settings: env > file > default.
    for dotted, env_name in _GLOBAL_ENV.items():
        keys = tuple(dotted.split("."))
        if env_name in env:
            _put(raw, keys, env[env_name])
            prov.sources[dotted] = f"env {env_name}"
            prov.env_values[dotted] = env[env_name]
        else:
            found, value = _get(file_data, keys)
            if found:
                _put(raw, keys, value)
                prov.sources[dotted] = _where(path, file_lines, keys)
    kafka_file = file_data.get("kafka") or {}
    if isinstance(kafka_file, Mapping):
        for key in kafka_file:
            if key not in KafkaSettings.model_fields:
                raise ConfigError(
                    f"{_where(path, file_lines, ('kafka', key))}: unknown setting kafka.{key}"
                    f"{_suggest(str(key), set(KafkaSettings.model_fields))}"
                )

    _check_default_env_names(env)
    profile = raw.get("deployment_profile") or None
    try:
        preset_layer(None, profile)
    except ValueError as exc:
        raise ConfigError(
            f"invalid setting deployment_profile (from {prov.source_of('deployment_profile')}): {exc}"
        ) from None
    raw["sinks"] = _load_sinks(path, file_data, file_lines, env, prov, profile)
    unknown = unknown_sink_env(env, raw["sinks"])
    prov.warnings.extend(f"{problem}; it is ignored (STRICT_CONFIG=true makes it an error)" for problem in unknown)

    try:
        settings = Settings(**raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, prov)) from None
    if settings.strict_config and unknown:
        raise ConfigError("; ".join(unknown) + f" (strict_config is on, from {prov.source_of('strict_config')})")
    return settings, prov


# Variables of other programs that a sink's prefix happens to match (the sink named "http" has prefix HTTP_).
FOREIGN_ENV = frozenset({"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"})


def known_env_names(sinks: Mapping[str, SinkSettings]) -> set[str]:
    """Every env variable the loader reads for these sinks and for the global settings."""
    names = {*_GLOBAL_ENV.values(), CONFIG_ENV}
    for leaf in sink_leaves(SinkSettings):
        names.update(_default_env_names(leaf))
    for name, sink in sinks.items():
        names.update(f"{env_prefix(name)}_{leaf.suffix}" for leaf in sink_leaves(type(sink)))
    return names


def unknown_sink_env(env: Mapping[str, str], sinks: Mapping[str, SinkSettings]) -> list[str]:
    """One line per env variable that starts with a sink's prefix (TSDB_, LOKI_, ...) but sets nothing,
    with the closest setting's variable. A variable is judged by the longest prefix it matches (TSDB_ARCHIVE_X
    belongs to a sink named tsdb_archive); FOREIGN_ENV and anything without a sink's prefix are left alone."""
    known = known_env_names(sinks)
    prefixes = sorted(((env_prefix(name), name) for name in sinks), key=lambda p: len(p[0]), reverse=True)
    problems: list[str] = []
    for variable in sorted(env):
        if variable in known or variable in FOREIGN_ENV:
            continue
        owner = next((name for prefix, name in prefixes if variable.startswith(prefix + "_")), None)
        if owner is None:
            continue
        own = {f"{env_prefix(owner)}_{leaf.suffix}" for leaf in sink_leaves(type(sinks[owner]))}
        problems.append(f"env {variable} is not a setting of sink {owner!r}{_suggest(variable, own)}")
    return problems


def _load_sinks(
    path: Path | None,
    file_data: Mapping[str, Any],
    file_lines: Mapping[tuple[str, ...], int],
    env: Mapping[str, str],
    prov: Provenance,
    profile: str | None = None,
) -> dict[str, SinkSettings]:
    file_sinks = file_data.get("sinks") or {}
    file_defaults = file_data.get("sink_defaults") or {}
    if not isinstance(file_sinks, Mapping):
        raise ConfigError(f"{_where(path, file_lines, ('sinks',))}: sinks must be a mapping of name -> settings")
    names: dict[str, str] = {name: type_ for name, (type_, _) in BUILTIN_SINKS.items()}
    for name, body in file_sinks.items():
        body = body or {}
        declared = body.get("type") if isinstance(body, Mapping) else None
        if declared is None and name not in BUILTIN_SINKS:
            raise ConfigError(
                f"{_where(path, file_lines, ('sinks', name))}: unknown sink {name!r}"
                f"{_suggest(str(name), set(BUILTIN_SINKS))}; known sinks: {', '.join(BUILTIN_SINKS)}. "
                f"To add another instance give it a type ({', '.join(sink_types())})"
            )
        type_ = str(declared or names[name])
        if type_ not in sink_types():
            raise ConfigError(
                f"{_where(path, file_lines, ('sinks', name, 'type'))}: sink {name!r} has unknown type {type_!r}"
                f"{_suggest(type_, set(sink_types()))}; known types: {', '.join(sink_types())}"
            )
        names[str(name)] = type_

    sinks: dict[str, SinkSettings] = {}
    for name, type_ in names.items():
        model = sink_types()[type_].settings
        prefix = env_prefix(name)
        raw: dict[str, Any] = {"name": name, "type": type_}
        if name in BUILTIN_SINKS:
            raw["enabled"] = BUILTIN_SINKS[name][1]
        body = file_sinks.get(name) or {}
        allowed = {leaf.path[0] for leaf in sink_leaves(model)} | {"type"}
        for key in body:
            if key not in allowed:
                raise ConfigError(
                    f"{_where(path, file_lines, ('sinks', name, key))}: unknown setting sinks.{name}.{key}"
                    f"{_suggest(str(key), allowed)}"
                )
        layers = _named_layers(name, prefix, body, file_defaults, env, profile, path, file_lines)
        for leaf in sink_leaves(model):
            dotted = ".".join(("sinks", name, *leaf.path))
            candidates: list[tuple[str, Any, str]] = []
            if f"{prefix}_{leaf.suffix}" in env:
                candidates.append((f"env {prefix}_{leaf.suffix}", env[f"{prefix}_{leaf.suffix}"], "env"))
            if leaf.defaultable:
                for default_env in _default_env_names(leaf):
                    if default_env in env:
                        candidates.append((f"env {default_env}", env[default_env], "env"))
            found, value = _get(body, leaf.path)
            if found:
                candidates.append((_where(path, file_lines, ("sinks", name, *leaf.path)), value, "file"))
            found, value = _get(file_defaults, leaf.path) if leaf.defaultable else (False, None)
            if found:
                candidates.append((_where(path, file_lines, ("sink_defaults", *leaf.path)), value, "file"))
            for source, layer in layers:
                found, value = _get(layer, leaf.path)
                if found:
                    candidates.append((source, value, "layer"))
            if candidates:
                source, value, kind = candidates[0]
                _put(raw, leaf.path, value)
                prov.sources[dotted] = source
                if kind == "env":
                    prov.env_values[dotted] = str(value)
        try:
            sinks[name] = model.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, prov, loc_prefix=("sinks", name))) from None
    return sinks


def _named_layers(
    name: str,
    prefix: str,
    body: Mapping[str, Any],
    file_defaults: Mapping[str, Any],
    env: Mapping[str, str],
    profile: str | None,
    path: Path | None,
    file_lines: Mapping[tuple[str, ...], int],
) -> list[tuple[str, dict[str, dict[str, object]]]]:
    """Values from the sink's retry preset and the deployment profile: below file and env, above the
    built-in defaults (a preset wins over the profile for the retry settings)."""
    preset = env.get(f"{prefix}_RETRY_PRESET") or env.get("SINK_DEFAULT_RETRY_PRESET")
    preset = preset or body.get("retry_preset") or file_defaults.get("retry_preset")
    layers: list[tuple[str, dict[str, dict[str, object]]]] = []
    try:
        if preset:
            layers.append((f"preset {preset}", preset_layer(str(preset), None)))
        if profile:
            layers.append((f"profile {profile}", preset_layer(None, profile)))
    except ValueError as exc:
        raise ConfigError(f"invalid setting sinks.{name}.retry_preset ({prefix}_RETRY_PRESET): {exc}") from None
    return layers


def _default_env_names(leaf: SinkLeaf) -> list[str]:
    names = [f"SINK_DEFAULT_{leaf.suffix}"]
    if leaf.path[0] == "queue" or leaf.suffix == "FLUSH_BANDWIDTH_BYTES_PER_SEC":
        names.append(leaf.suffix)  # the seeds' global QUEUE_MAX_BYTES, FLUSH_BANDWIDTH_BYTES_PER_SEC, ...
    return names


def _check_default_env_names(env: Mapping[str, str]) -> None:
    known = {f"SINK_DEFAULT_{leaf.suffix}" for leaf in sink_leaves(SinkSettings)}
    for name in env:
        if name.startswith("SINK_DEFAULT_") and name not in known:
            raise ConfigError(f"unknown setting {name}{_suggest(name, known)}")


def _read_config_file(path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{CONFIG_ENV}={path}: cannot read the config file: {exc.strerror}") from None
    try:
        data = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {exc.problem}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, CommentedMap):
        raise ConfigError(f"{path}:1: the config file must be a mapping of settings")
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: CommentedMap, prefix: tuple[str, ...]) -> None:
        for key in node:
            lines[(*prefix, str(key))] = node.lc.key(key)[0] + 1
            child = node[key]
            if isinstance(child, CommentedMap):
                walk(child, (*prefix, str(key)))

    walk(data, ())
    return _plain(data), lines


def _plain(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _where(path: Path | None, lines: Mapping[tuple[str, ...], int], keys: tuple[str, ...]) -> str:
    line = lines.get(tuple(str(k) for k in keys))
    return f"{path}:{line}" if line else str(path)


def _get(data: Any, keys: tuple[str, ...]) -> tuple[bool, Any]:
    node = data
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return False, None
        node = node[key]
    return True, node


def _put(data: dict[str, Any], keys: tuple[str, ...], value: Any) -> None:
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def _suggest(word: str, options: set[str]) -> str:
    close = difflib.get_close_matches(word, sorted(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe(exc: ValidationError, prov: Provenance, loc_prefix: tuple[str, ...] = ()) -> str:
    problems = []
    for error in exc.errors():
        loc = [str(p) for p in (*loc_prefix, *error["loc"])]
        dotted = ".".join(loc)
        source = prov.source_of(dotted)
        shown = ""
        if dotted in prov.env_values and not _is_secret_path(dotted):
            shown = f"={display_value(dotted, prov.env_values[dotted])!r}"
        where = f" (from {source}{shown})" if source != "default" else ""
        problems.append(f"invalid setting {dotted}{where}: {error['msg']}{_in_units(dotted, error)}")
    return "; ".join(problems)


_BOUND_ERRORS = ("less_than_equal", "less_than", "greater_than_equal", "greater_than")


def _in_units(dotted: str, error: Any) -> str:
    """' ms (1 h)' after a bound on a duration setting, so the limit reads as a time."""
    ctx = error.get("ctx") or {}
    limit = next((ctx[k] for k in ("le", "lt", "ge", "gt") if k in ctx), None)
    if error.get("type") not in _BOUND_ERRORS or not isinstance(limit, int | float) or limit <= 0:
        return ""
    leaf = dotted.rsplit(".", 1)[-1]
    seconds = limit / 1000 if leaf.endswith("_ms") else limit if leaf.endswith("_sec") else None
    if seconds is None:
        return ""
    for unit, size in (("day", 86_400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f" {'ms' if leaf.endswith('_ms') else 's'} ({seconds // size:g} {unit})"
    return ""


# --------------------------------------------------------------------------------------------------
# Showing


_SECRET_WORDS = ("password", "secret", "token", "dsn", "api_key", "headers")


def _is_secret_path(dotted: str) -> bool:
    return any(word in dotted.rsplit(".", 1)[-1] for word in _SECRET_WORDS)


def display_value(dotted: str, value: Any) -> str:
    """A setting's value for `config show` and error messages: secrets masked, URLs and DSNs without
    their passwords, secret query parameters or token-like path segments, every text through the
    installed redactor (numbers and booleans are shown as they are)."""
    if isinstance(value, SecretStr):
        return mask_url(value.get_secret_value()) if dotted.endswith("dsn") else MASK
    if isinstance(value, str) and dotted.endswith("url"):
        return redact(mask_url(value))
    if value is None:
        return "-"
    if _is_secret_path(dotted):
        return MASK
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return redact(str(value))


def iter_effective(settings: Settings) -> Iterator[tuple[str, Any]]:
    """Every leaf setting as (dotted path, value), in model order."""

    def walk(model: BaseModel, prefix: str) -> Iterator[tuple[str, Any]]:
        for name, info in type(model).model_fields.items():
            value = getattr(model, name)
            key = info.alias or name
            dotted = f"{prefix}{key}"
            if isinstance(value, BaseModel):
                yield from walk(value, f"{dotted}.")
            elif isinstance(value, dict) and value and all(isinstance(v, BaseModel) for v in value.values()):
                for sub_name, sub in value.items():
                    yield from walk(sub, f"{dotted}.{sub_name}.")
            else:
                yield dotted, value

    yield from walk(settings, "")
