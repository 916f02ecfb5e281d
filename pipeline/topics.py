"""The topic catalog: load, template and validate ``topics.yaml``; plan and apply it against Kafka.

``topics.yaml`` declares every topic the pipeline uses (partitions, replication factor and topic
configs). Names and config values are templates filled from :class:`TopicVars`, so enabling a sink in
the configuration adds its delivery, retry-tier and DLQ topics without editing anything else.

Loading validates the file and reports problems as ``<path>:<line>: <problem>`` (:class:`TopicsFileError`).

Planning compares the catalog with the live cluster:

* a missing topic is created;
* a declared config value that differs from the live topic is altered (fixable);
* a partition count or replication factor that differs is *unfixable drift*: it is reported and never
  changed, because changing the partition count remaps keys (and breaks the RocksDB-backed dedupe
  table, whose changelog must stay co-partitioned with the by-hash topic).
"""

from __future__ import annotations

import ast
import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import MarkedYAMLError, YAMLError

import pipeline

__all__ = [
    "FOR_EACH",
    "REQUIRED_ROLES",
    "TEMPLATE_VARIABLES",
    "SinkTopicVars",
    "TopicCatalog",
    "TopicChange",
    "TopicPlan",
    "TopicSpec",
    "TopicVars",
    "TopicsBrokerError",
    "TopicsError",
    "TopicsFileError",
    "apply_topics",
    "default_topics_path",
    "diff_topics",
    "load_topics",
    "plan_topics",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Public data model
# --------------------------------------------------------------------------------------------------

#: Roles every topics file must declare (other roles are allowed and managed the same way).
REQUIRED_ROLES: tuple[str, ...] = (
    "ingest",
    "ingest_dlq",
    "by_hash",
    "dedupe_changelog",
    "sink",
    "sink_retry",
    "sink_dlq",
)

#: ``for_each`` values and the loop variables each one provides.
FOR_EACH: Mapping[str, tuple[str, ...]] = {
    "sink": ("sink",),
    "sink_retry_tier": ("sink", "tier"),
}

# The required roles that are per sink, and the for_each they must use.
_ROLE_FOR_EACH: Mapping[str, str] = {"sink": "sink", "sink_retry": "sink_retry_tier", "sink_dlq": "sink"}

#: A retry tier label as `tier_label` writes it (500ms, 1s, 5m, 2h).
TIER_LABEL_PATTERN = r"[0-9]+(?:ms|s|m|h)"

_STR_VARIABLES = ("prefix", "ingest_topic", "app_id")
_INT_VARIABLES = ("idempotency_window_ms", "ingest_message_bytes", "message_bytes")
_LOOP_VARIABLES = ("sink", "tier")
#: Every variable a template may use.
TEMPLATE_VARIABLES: tuple[str, ...] = _STR_VARIABLES + _INT_VARIABLES + _LOOP_VARIABLES


@dataclass(frozen=True)
class SinkTopicVars:
    """One enabled sink as far as topics are concerned."""

    name: str  # e.g. "tsdb"
    retry_tiers: tuple[str, ...] = ()  # tier labels in retry order, e.g. ("1s", "10s", "1m")
    # The seeds' QUEUE_MAX_BYTES: Kafka is the queue, so it becomes the sink topic's retention.bytes
    # (divided over its partitions, as Kafka counts retention.bytes per partition). None: topics.yaml's.
    queue_max_bytes: int | None = None


@dataclass(frozen=True)
class TopicVars:
    """The values templates in ``topics.yaml`` are filled from (built from the settings)."""

    ingest_topic: str  # INGEST_TOPIC, default "events.ingest"
    app_id: str  # faust app id, default "pipeline"
    sinks: tuple[SinkTopicVars, ...]  # enabled sinks only
    prefix: str = ""  # TOPIC_PREFIX
    idempotency_window_ms: int = 86_400_000
    partitions: int | None = None  # overrides defaults.partitions when set (KAFKA_TOPIC_PARTITIONS)
    replication_factor: int | None = None  # overrides defaults.replication_factor (KAFKA_REPLICATION_FACTOR)
    # max.message.bytes of the ingest topic and of the topics the pipeline writes (pipeline.limits)
    ingest_message_bytes: int = 1_048_576 + 65_536
    message_bytes: int = 1_048_576 + 2 * 65_536


@dataclass(frozen=True)
class TopicSpec:
    """One resolved topic: what must exist on the cluster."""

    role: str  # "ingest", "ingest_dlq", "by_hash", "dedupe_changelog", "sink", "sink_retry", "sink_dlq"
    name: str
    partitions: int
    replication_factor: int
    config: Mapping[str, str]  # Kafka topic configs; values are always strings
    sink: str | None = None
    tier: str | None = None
    partitions_of: str | None = None  # role this topic must stay co-partitioned with
    #: For retry tiers: a regex matching this sink's tier topic for ANY tier label (tiers of an earlier
    #: retry policy included), so delivery keeps reading tiers the current policy no longer names.
    name_pattern: str | None = None


class TopicsError(Exception):
    """Base class of the errors this module raises on purpose."""


class TopicsFileError(TopicsError, ValueError):
    """``topics.yaml`` is malformed. The message is ``<path>:<line>: <problem>`` (line is 1-based)."""

    def __init__(self, path: Path | str, line: int, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        super().__init__(f"{self.path}:{line}: {problem}")


class TopicsBrokerError(TopicsError, RuntimeError):
    """The cluster could not be reached, or refused a request."""

    def __init__(self, message: str, bootstrap_servers: str, *, unreachable: bool = False, reason: str = "") -> None:
        self.bootstrap_servers = bootstrap_servers
        self.unreachable = unreachable
        self.reason = reason or message
        super().__init__(message)


def default_topics_path() -> Path:
    """The topic catalog shipped inside the package (``pipeline/topics.yaml``, package data).

    It does not depend on the current directory or the environment: ``TOPICS_FILE`` (env or config
    file) goes through the settings model (:meth:`pipeline.config.Settings.topics_path`), and
    ``pipeline topics --file`` overrides both. The repository's top-level ``topics.yaml`` is a link to
    this file, so there is one catalog to edit.
    """
    return Path(pipeline.__file__).resolve().parent / "topics.yaml"


class TopicCatalog:
    """All resolved topics, in file order (per-sink roles expanded in sink, then tier, order)."""

    def __init__(self, specs: Sequence[TopicSpec], source: Path | None = None) -> None:
        self.specs: tuple[TopicSpec, ...] = tuple(specs)
        self.source = source
        self._by_name = {s.name: s for s in self.specs}
        self.ingest = self._single("ingest")
        self.ingest_dlq = self._single("ingest_dlq")
        self.by_hash = self._single("by_hash")
        self.dedupe_changelog = self._single("dedupe_changelog")

    def _single(self, role: str) -> TopicSpec:
        found = self.role(role)
        if len(found) != 1:
            raise ValueError(f"expected exactly one topic with role {role!r}, found {len(found)}")
        return found[0]

    def role(self, role: str) -> tuple[TopicSpec, ...]:
        """Every topic of ``role``."""
        return tuple(s for s in self.specs if s.role == role)

    def get(self, name: str) -> TopicSpec | None:
        """The topic called ``name``, if declared."""
        return self._by_name.get(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    @property
    def sinks(self) -> tuple[str, ...]:
        """Names of the sinks the catalog was resolved for, in order."""
        return tuple(s.sink for s in self.role("sink") if s.sink is not None)

    def _sink_role(self, role: str, sink: str) -> tuple[TopicSpec, ...]:
        found = tuple(s for s in self.specs if s.role == role and s.sink == sink)
        if not found and sink not in self.sinks:
            known = ", ".join(self.sinks) or "none"
            raise KeyError(f"no topics for sink {sink!r} (enabled sinks: {known})")
        return found

    def sink(self, name: str) -> TopicSpec:
        """The delivery topic of sink ``name``."""
        return self._sink_role("sink", name)[0]

    def sink_retry(self, name: str) -> tuple[TopicSpec, ...]:
        """The retry-tier topics of sink ``name``, in tier order."""
        return self._sink_role("sink_retry", name)

    def sink_retry_pattern(self, name: str) -> str | None:
        """A regex matching every retry tier topic sink ``name`` may have, of any retry policy."""
        return next((s.name_pattern for s in self.sink_retry(name) if s.name_pattern), None)

    def orphaned_tiers(self, existing: Iterable[str]) -> dict[str, str]:
        """``{topic: sink}`` of the ``existing`` topics that are retry tiers of an enabled sink but not of
        its current retry policy (left behind by a changed backoff or profile)."""
        out: dict[str, str] = {}
        for sink in self.sinks:
            pattern = self.sink_retry_pattern(sink)
            if pattern is None:
                continue
            regex = re.compile(pattern)
            out.update({t: sink for t in existing if t not in self._by_name and regex.fullmatch(t)})
        return out

    def sink_dlq(self, name: str) -> TopicSpec:
        """The dead-letter topic of sink ``name``."""
        return self._sink_role("sink_dlq", name)[0]

    def sink_parked(self, name: str) -> TopicSpec | None:
        """The parking topic of sink ``name`` (None when the topics file declares none)."""
        found = self._sink_role("sink_parked", name)
        return found[0] if found else None

    @property
    def ingest_parked(self) -> TopicSpec | None:
        """The parking topic of the ingest DLQ (None when the topics file declares none)."""
        found = self.role("ingest_parked")
        return found[0] if found else None

    def __iter__(self) -> Iterator[TopicSpec]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def __repr__(self) -> str:
        return f"TopicCatalog({len(self.specs)} topics from {self.source})"


ChangeKind = Literal["create", "alter_config", "drift"]


@dataclass
class TopicChange:
    """One difference between the catalog and the cluster."""

    kind: ChangeKind
    topic: str
    detail: str  # human text
    fixable: bool
    role: str | None = None
    #: For ``alter_config``: the config values apply sets (new values only).
    updates: dict[str, str] = field(default_factory=dict)
    #: For ``alter_config``: the cluster's values of those keys (None: unset, the broker default).
    current: dict[str, str | None] = field(default_factory=dict)
    #: True once apply has carried the change out.
    done: bool = False


@dataclass
class TopicPlan:
    """What differs (plan) or what was done and refused (apply)."""

    changes: list[TopicChange]
    checked: int = 0  # number of declared topics compared
    applied: bool = False  # False: a plan; True: the result of apply
    #: Retry tier topics of an earlier retry policy: ``{topic: records still in it}``. Delivery keeps
    #: reading them; delete one by hand once it is empty. Informational: never created or changed.
    orphaned_tiers: dict[str, int] = field(default_factory=dict)

    @property
    def has_unfixable_drift(self) -> bool:
        return any(not c.fixable for c in self.changes)

    @property
    def in_sync(self) -> bool:
        return not self.changes

    def render(self) -> str:
        orphans = [
            f"? orphaned retry tier {topic}: {count} records waiting (still delivered; delete it once empty)"
            for topic, count in sorted(self.orphaned_tiers.items())
        ]
        if not self.changes:
            return "\n".join([*orphans, f"no changes: all {self.checked} topics match the topics file"])
        lines: list[str] = list(orphans)
        for c in self.changes:
            if c.kind == "create":
                verb = "created" if c.done else ("would create" if not self.applied else "not created")
                lines.append(f"+ {verb} {c.topic}: {c.detail}")
            elif c.kind == "alter_config":
                verb = "altered" if c.done else ("would alter" if not self.applied else "not altered")
                lines.append(f"~ {verb} {c.topic}: {c.detail}")
            else:
                lines.append(f"! drift {c.topic}: {c.detail} (not fixable: left unchanged)")
        creates = sum(1 for c in self.changes if c.kind == "create" and c.fixable)
        alters = sum(1 for c in self.changes if c.kind == "alter_config")
        drift = sum(1 for c in self.changes if not c.fixable)
        if self.applied:
            summary = f"applied: {creates} created, {alters} altered, {drift} unfixable drift refused"
        else:
            summary = f"plan: {creates} to create, {alters} to alter, {drift} unfixable drift"
        lines.append(summary)
        if drift:
            lines.append(
                "partition counts and replication factors are never changed here (new partition counts remap "
                "keys and break the dedupe table): recreate or migrate those topics by hand"
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------------

_TOP_KEYS = ("defaults", "topics")
_DEFAULT_KEYS = ("partitions", "replication_factor", "config")
_TOPIC_KEYS = ("name", "for_each", "partitions", "partitions_of", "replication_factor", "config")
_ROLE_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_TOPIC_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_MAX_TOPIC_NAME = 249

#: Topic-level configs Kafka (3.x) understands. Anything else is almost certainly a typo; extend this
#: set when a newer broker adds one.
KNOWN_TOPIC_CONFIGS: frozenset[str] = frozenset(
    {
        "cleanup.policy",
        "compression.type",
        "compression.gzip.level",
        "compression.lz4.level",
        "compression.zstd.level",
        "delete.retention.ms",
        "file.delete.delay.ms",
        "flush.messages",
        "flush.ms",
        "follower.replication.throttled.replicas",
        "index.interval.bytes",
        "leader.replication.throttled.replicas",
        "local.retention.bytes",
        "local.retention.ms",
        "max.compaction.lag.ms",
        "max.message.bytes",
        "message.downconversion.enable",
        "message.format.version",
        "message.timestamp.after.max.ms",
        "message.timestamp.before.max.ms",
        "message.timestamp.difference.max.ms",
        "message.timestamp.type",
        "min.cleanable.dirty.ratio",
        "min.compaction.lag.ms",
        "min.insync.replicas",
        "preallocate",
        "remote.log.copy.disable",
        "remote.log.delete.on.disable",
        "remote.storage.enable",
        "retention.bytes",
        "retention.ms",
        "segment.bytes",
        "segment.index.bytes",
        "segment.jitter.ms",
        "segment.ms",
        "unclean.leader.election.enable",
    }
)
_INTEGER_CONFIGS = frozenset(
    k
    for k in KNOWN_TOPIC_CONFIGS
    if k.endswith((".ms", ".bytes", ".messages", ".replicas", ".level")) and "throttled" not in k
)
_CLEANUP_POLICIES = frozenset({"compact", "delete"})
#: The smallest value Kafka accepts for an integer topic config, and what it means there (Kafka's
#: TopicConfig validators). -1 means "unlimited" for retention; -2 means "as retention.*" for local.*.
_CONFIG_MINIMUM: Mapping[str, tuple[int, str]] = {
    "retention.ms": (-1, "-1 (unlimited) or a number of ms >= 0"),
    "retention.bytes": (-1, "-1 (unlimited) or a number of bytes >= 0"),
    "local.retention.ms": (-2, "-2 (as retention.ms), -1 (unlimited) or a number of ms >= 0"),
    "local.retention.bytes": (-2, "-2 (as retention.bytes), -1 (unlimited) or a number of bytes >= 0"),
    "segment.bytes": (14, "at least 14 bytes"),
    "segment.ms": (1, "at least 1 ms"),
    "segment.index.bytes": (4, "at least 4 bytes"),
    "max.message.bytes": (0, ">= 0 bytes"),
    "min.insync.replicas": (1, "at least 1"),
    "flush.messages": (1, "at least 1"),
}
#: Kafka stores integer topic configs as Java longs.
_LONG_MAX = 2**63 - 1
#: Longest expression inside one template's braces; longer ones are refused before parsing.
MAX_EXPRESSION_CHARS = 200


@dataclass
class _Template:
    text: str
    line: int  # 1-based
    names: frozenset[str]  # variables used


@dataclass
class _Entry:
    role: str
    line: int
    name: _Template
    for_each: str | None = None
    partitions: int | None = None
    partitions_line: int = 0
    partitions_of: str | None = None
    partitions_of_line: int = 0
    replication_factor: int | None = None
    config: dict[str, _Template] = field(default_factory=dict)
    config_key_lines: dict[str, int] = field(default_factory=dict)


class _Loader:
    def __init__(self, path: Path, vars: TopicVars) -> None:
        self.path = path
        self.vars = vars

    def error(self, line: int, problem: str) -> TopicsFileError:
        return TopicsFileError(self.path, line, problem)

    # -- YAML ----------------------------------------------------------------------------------

    def parse(self, text: str) -> CommentedMap:
        yaml = YAML(typ="rt")
        try:
            data = yaml.load(text)
        except MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 1
            problem = exc.problem or "syntax error"
            if exc.context:
                problem += f" ({exc.context})"
            raise self.error(line, f"invalid YAML: {problem}") from None
        except YAMLError as exc:
            raise self.error(1, f"invalid YAML: {exc}") from None
        except RecursionError:
            raise self.error(1, "invalid YAML: nested too deeply") from None
        if data is None:
            raise self.error(1, "the file is empty; expected a mapping with 'defaults' and 'topics'")
        if not isinstance(data, CommentedMap):
            raise self.error(_line_of(data), "expected a mapping with 'defaults' and 'topics' at top level")
        return data

    @staticmethod
    def key_line(m: CommentedMap, key: Any) -> int:
        return int(m.lc.key(key)[0]) + 1

    @staticmethod
    def value_line(m: CommentedMap, key: Any) -> int:
        return int(m.lc.value(key)[0]) + 1

    def check_keys(self, m: CommentedMap, allowed: Sequence[str], where: str) -> None:
        for key in m:
            if key not in allowed:
                raise self.error(
                    self.key_line(m, key),
                    f"unknown key {key!r} in {where} (allowed: {', '.join(allowed)})",
                )

    def positive_int(self, m: CommentedMap, key: str, where: str) -> int:
        value = m[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self.error(self.value_line(m, key), f"{where}{key} must be a positive integer, got {value!r}")
        return int(value)

    def mapping(self, m: CommentedMap, key: str, what: str) -> CommentedMap:
        value = m[key]
        if not isinstance(value, CommentedMap):
            raise self.error(self.value_line(m, key), f"{what} must be a mapping")
        return value

    # -- templates -----------------------------------------------------------------------------

    def template(self, raw: Any, line: int, what: str, loop_vars: Sequence[str]) -> _Template:
        if isinstance(raw, bool):
            text = "true" if raw else "false"
        elif isinstance(raw, int | float):
            text = str(raw)
        elif isinstance(raw, str):
            text = raw
        else:
            raise self.error(line, f"{what} must be a string or a number, got {type(raw).__name__}")
        names: set[str] = set()
        for kind, body in _tokens(text):
            if kind == "stray":
                raise self.error(line, f"{what}: unbalanced {body!r} in {text!r} (write {body * 2} for a literal)")
            if kind != "expr":
                continue
            if len(body) > MAX_EXPRESSION_CHARS:
                raise self.error(
                    line, f"{what}: the expression {{{body[:30]}...}} is longer than {MAX_EXPRESSION_CHARS} characters"
                )
            try:
                used = _expression_names(body)
            except ValueError as exc:
                raise self.error(line, f"{what}: invalid template {{{body}}}: {exc}") from None
            for name in used:
                if name not in TEMPLATE_VARIABLES:
                    raise self.error(
                        line,
                        f"{what}: unknown template variable {{{name}}} "
                        f"(known: {', '.join('{' + v + '}' for v in TEMPLATE_VARIABLES)})",
                    )
                if name in _LOOP_VARIABLES and name not in loop_vars:
                    needs = (
                        "for_each: sink or for_each: sink_retry_tier"
                        if name == "sink"
                        else ("for_each: sink_retry_tier")
                    )
                    raise self.error(line, f"{what}: template variable {{{name}}} is only available with {needs}")
                # Inside an arithmetic expression only integer variables make sense.
                if (len(used) > 1 or body.strip() != name) and name not in _INT_VARIABLES:
                    raise self.error(
                        line,
                        f"{what}: {{{name}}} is a string and cannot be used in the expression {{{body}}}",
                    )
            names.update(used)
        return _Template(text=text, line=line, names=frozenset(names))

    def render(self, t: _Template, env: Mapping[str, str | int], what: str) -> str:
        out: list[str] = []
        for kind, body in _tokens(t.text):
            if kind == "text":
                out.append(body)
            elif kind == "expr":
                try:
                    out.append(str(_evaluate(body, env)))
                except (ValueError, ArithmeticError) as exc:
                    raise self.error(t.line, f"{what}: cannot evaluate {{{body}}}: {exc}") from None
        return "".join(out)

    # -- entries -------------------------------------------------------------------------------

    def defaults(self, data: CommentedMap) -> tuple[int | None, int | None, dict[str, _Template], dict[str, int]]:
        partitions: int | None = None
        rf: int | None = None
        config: dict[str, _Template] = {}
        key_lines: dict[str, int] = {}
        if "defaults" in data:
            d = data["defaults"]
            if d is not None:
                if not isinstance(d, CommentedMap):
                    raise self.error(self.value_line(data, "defaults"), "'defaults' must be a mapping")
                self.check_keys(d, _DEFAULT_KEYS, "defaults")
                if "partitions" in d:
                    partitions = self.positive_int(d, "partitions", "defaults.")
                if "replication_factor" in d:
                    rf = self.positive_int(d, "replication_factor", "defaults.")
                if "config" in d:
                    config, key_lines = self.config(d, "defaults.config", ())
        for label, value in (
            ("partitions", self.vars.partitions),
            ("replication_factor", self.vars.replication_factor),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"TopicVars.{label} must be a positive integer, got {value!r}")
        if self.vars.partitions is not None:
            partitions = self.vars.partitions
        if self.vars.replication_factor is not None:
            rf = self.vars.replication_factor
        return partitions, rf, config, key_lines

    def config(
        self, m: CommentedMap, what: str, loop_vars: Sequence[str]
    ) -> tuple[dict[str, _Template], dict[str, int]]:
        raw = m["config"]
        if raw is None:
            return {}, {}
        if not isinstance(raw, CommentedMap):
            raise self.error(self.value_line(m, "config"), f"{what} must be a mapping of Kafka topic configs")
        out: dict[str, _Template] = {}
        key_lines: dict[str, int] = {}
        for key in raw:
            kline = self.key_line(raw, key)
            if not isinstance(key, str) or key not in KNOWN_TOPIC_CONFIGS:
                raise self.error(kline, f"{what}: unknown Kafka topic config {key!r}")
            value = raw[key]
            if value is None:
                raise self.error(self.value_line(raw, key), f"{what}.{key} has no value")
            out[key] = self.template(value, self.value_line(raw, key), f"{what}.{key}", loop_vars)
            key_lines[key] = kline
        return out, key_lines

    def entry(self, topics: CommentedMap, role: Any) -> _Entry:
        line = self.key_line(topics, role)
        if not isinstance(role, str) or not _ROLE_RE.match(role):
            raise self.error(line, f"topic role {role!r} must be a lower_snake_case identifier")
        m = topics[role]
        if not isinstance(m, CommentedMap):
            raise self.error(line, f"topic {role!r} must be a mapping with at least 'name'")
        self.check_keys(m, _TOPIC_KEYS, f"topic {role!r}")
        for_each: str | None = None
        if "for_each" in m:
            fe = m["for_each"]
            if not isinstance(fe, str) or fe not in FOR_EACH:
                raise self.error(
                    self.value_line(m, "for_each"),
                    f"topic {role!r}: unknown for_each {fe!r} (known: {', '.join(FOR_EACH)})",
                )
            for_each = fe
        wanted = _ROLE_FOR_EACH.get(role)
        if role in REQUIRED_ROLES and for_each != wanted:
            where = self.value_line(m, "for_each") if "for_each" in m else line
            if wanted is None:
                raise self.error(where, f"topic {role!r} is a single topic and cannot have for_each")
            raise self.error(where, f"topic {role!r} needs 'for_each: {wanted}'")
        loop_vars = FOR_EACH[for_each] if for_each else ()
        if "name" not in m:
            raise self.error(line, f"topic {role!r} has no 'name'")
        name = self.template(m["name"], self.value_line(m, "name"), f"topic {role!r} name", loop_vars)
        if not isinstance(m["name"], str):
            raise self.error(name.line, f"topic {role!r} name must be a string")
        e = _Entry(role=role, line=line, name=name, for_each=for_each)
        if "partitions" in m:
            e.partitions = self.positive_int(m, "partitions", f"topic {role!r}: ")
            e.partitions_line = self.value_line(m, "partitions")
        if "partitions_of" in m:
            e.partitions_of = m["partitions_of"]
            e.partitions_of_line = self.value_line(m, "partitions_of")
        if "replication_factor" in m:
            e.replication_factor = self.positive_int(m, "replication_factor", f"topic {role!r}: ")
        if "config" in m:
            e.config, e.config_key_lines = self.config(m, f"topic {role!r} config", loop_vars)
        return e

    def resolve_partitions(self, entries: Mapping[str, _Entry], default: int | None) -> dict[str, int]:
        resolved: dict[str, int] = {}

        def resolve(role: str, chain: tuple[str, ...]) -> int:
            if role in resolved:
                return resolved[role]
            e = entries[role]
            count: int
            if e.partitions_of is not None:
                target = e.partitions_of
                if not isinstance(target, str) or target not in entries:
                    raise self.error(
                        e.partitions_of_line,
                        f"topic {role!r}: partitions_of names unknown role {target!r} (roles: {', '.join(entries)})",
                    )
                if target in chain or target == role:
                    cycle = " -> ".join((*chain, role, target))
                    raise self.error(e.partitions_of_line, f"topic {role!r}: partitions_of cycle {cycle}")
                count = resolve(target, (*chain, role))
                if e.partitions is not None and e.partitions != count:
                    raise self.error(
                        e.partitions_line,
                        f"topic {role!r}: partitions {e.partitions} differs from partitions_of "
                        f"{target!r} ({count} partitions)",
                    )
            elif e.partitions is not None:
                count = e.partitions
            elif default is not None:
                count = default
            else:
                raise self.error(
                    e.line,
                    f"topic {role!r} has no partition count: set partitions, partitions_of or defaults.partitions",
                )
            resolved[role] = count
            return count

        for role in entries:
            resolve(role, ())
        changelog = entries["dedupe_changelog"]
        if resolved["dedupe_changelog"] != resolved["by_hash"]:
            line = changelog.partitions_line or changelog.partitions_of_line or changelog.line
            raise self.error(
                line,
                f"topic 'dedupe_changelog' has {resolved['dedupe_changelog']} partitions but 'by_hash' has "
                f"{resolved['by_hash']}: faust's table changelog must have exactly the partitions of the "
                "topic it is keyed by (use 'partitions_of: by_hash')",
            )
        return resolved

    def check_config_value(self, key: str, value: str, line: int, what: str) -> None:
        if key in _INTEGER_CONFIGS:
            try:
                number = int(value)
            except ValueError:
                raise self.error(line, f"{what}.{key} must be an integer, got {value[:40]!r}") from None
            minimum, meaning = _CONFIG_MINIMUM.get(key, (0, "an integer >= 0"))
            if key.startswith("compression.") and key.endswith(".level"):
                minimum, meaning = -(2**31), "an integer"
            if not minimum <= number <= _LONG_MAX:
                raise self.error(line, f"{what}.{key} must be {meaning}, got {value[:40]}")
        if key == "cleanup.policy":
            parts = [p.strip() for p in value.split(",")]
            if not parts or any(p not in _CLEANUP_POLICIES for p in parts):
                raise self.error(
                    line, f'{what}.cleanup.policy must be delete, compact or "compact,delete", got {value!r}'
                )

    def load(self) -> TopicCatalog:
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise self.error(1, f"cannot read topics file: {exc.strerror or exc}") from None
        data = self.parse(text)
        self.check_keys(data, _TOP_KEYS, "the top level")
        if "topics" not in data:
            raise self.error(_line_of(data), "missing 'topics' mapping")
        topics = self.mapping(data, "topics", "'topics'")
        default_partitions, default_rf, default_config, _ = self.defaults(data)

        entries: dict[str, _Entry] = {}
        for role in topics:
            entries[role] = self.entry(topics, role)
        missing = [r for r in REQUIRED_ROLES if r not in entries]
        if missing:
            raise self.error(
                self.key_line(data, "topics"), f"'topics' is missing required role(s): {', '.join(missing)}"
            )
        partitions = self.resolve_partitions(entries, default_partitions)

        specs: list[TopicSpec] = []
        seen: dict[str, tuple[str, int]] = {}
        base_env: dict[str, str | int] = {
            "prefix": self.vars.prefix,
            "ingest_topic": self.vars.ingest_topic,
            "app_id": self.vars.app_id,
            "idempotency_window_ms": self.vars.idempotency_window_ms,
            "ingest_message_bytes": self.vars.ingest_message_bytes,
            "message_bytes": self.vars.message_bytes,
        }
        for e in entries.values():
            rf = e.replication_factor if e.replication_factor is not None else default_rf
            if rf is None:
                raise self.error(
                    e.line,
                    f"topic {e.role!r} has no replication factor: set replication_factor or "
                    "defaults.replication_factor",
                )
            for env in self.instances(e, base_env):
                what = f"topic {e.role!r}"
                name = self.render(e.name, env, f"{what} name")
                self.check_name(name, e.name.line, what)
                if name in seen:
                    other_role, other_line = seen[name]
                    raise self.error(
                        e.name.line,
                        f"{what}: name {name!r} is already used by topic {other_role!r} (line {other_line})",
                    )
                seen[name] = (e.role, e.name.line)
                config: dict[str, str] = {}
                for key, t in {**default_config, **e.config}.items():
                    value = self.render(t, env, f"{what} config.{key}")
                    self.check_config_value(key, value, t.line, f"{what} config")
                    config[key] = value
                sink = env.get("sink")
                tier = env.get("tier")
                if e.role == "sink":
                    queue = next((s.queue_max_bytes for s in self.vars.sinks if s.name == sink), None)
                    if queue is not None:
                        config["retention.bytes"] = str(max(1, queue // partitions[e.role]))
                name_pattern = None
                if e.for_each == "sink_retry_tier":
                    before, _, after = self.render(e.name, {**env, "tier": "\0"}, f"{what} name").partition("\0")
                    name_pattern = f"{re.escape(before)}{TIER_LABEL_PATTERN}{re.escape(after)}"
                specs.append(
                    TopicSpec(
                        role=e.role,
                        name=name,
                        partitions=partitions[e.role],
                        replication_factor=rf,
                        config=config,
                        sink=str(sink) if sink is not None else None,
                        tier=str(tier) if tier is not None else None,
                        partitions_of=e.partitions_of,
                        name_pattern=name_pattern,
                    )
                )
        return TopicCatalog(specs, source=self.path)

    def instances(self, e: _Entry, base: Mapping[str, str | int]) -> Iterator[dict[str, str | int]]:
        if e.for_each is None:
            yield dict(base)
        elif e.for_each == "sink":
            for s in self.vars.sinks:
                yield {**base, "sink": s.name}
        else:
            for s in self.vars.sinks:
                for tier in s.retry_tiers:
                    yield {**base, "sink": s.name, "tier": tier}

    def check_name(self, name: str, line: int, what: str) -> None:
        if not name:
            raise self.error(line, f"{what}: name resolves to an empty string")
        if name in (".", "..") or len(name) > _MAX_TOPIC_NAME or not _TOPIC_NAME_RE.match(name):
            raise self.error(
                line,
                f"{what}: {name!r} is not a valid Kafka topic name "
                f"(letters, digits, '.', '_', '-'; at most {_MAX_TOPIC_NAME} characters)",
            )


def _line_of(node: Any) -> int:
    lc = getattr(node, "lc", None)
    return int(lc.line) + 1 if lc is not None and lc.line is not None else 1


_TOKEN_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


def _tokens(text: str) -> Iterator[tuple[str, str]]:
    """Split a template into ("text", s), ("expr", body) and ("stray", brace) tokens."""
    pos = 0
    for m in _TOKEN_RE.finditer(text):
        if m.start() > pos:
            yield "text", text[pos : m.start()]
        tok = m.group(0)
        if tok in ("{{", "}}"):
            yield "text", tok[0]
        elif tok in ("{", "}"):
            yield "stray", tok
        else:
            yield "expr", m.group(1)
        pos = m.end()
    if pos < len(text):
        yield "text", text[pos:]


_BIN_OPS: Mapping[type[ast.operator], Callable[[int, int], int]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.FloorDiv: lambda a, b: a // b,
}
_FUNCS: Mapping[str, Callable[..., int]] = {"min": min, "max": max}


def _parse_expression(body: str) -> ast.expr:
    body = body.strip()
    if not body:
        raise ValueError("empty expression")
    try:
        tree = ast.parse(body, mode="eval")
    except (SyntaxError, RecursionError, MemoryError):  # too deeply nested counts as not an expression
        raise ValueError("not a variable name or an integer expression") from None
    return tree.body


def _expression_names(body: str) -> set[str]:
    """Variables an expression uses; raises ValueError for anything but names, ints, + - * // min max."""
    names: set[str] = set()

    def walk(node: ast.expr) -> None:
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            pass
        elif isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
            walk(node.left)
            walk(node.right)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            walk(node.operand)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCS
            and node.args
            and not node.keywords
        ):
            for arg in node.args:
                walk(arg)
        else:
            raise ValueError("only variables, integers, + - * //, min() and max() are allowed")

    walk(_parse_expression(body))
    return names


def _evaluate(body: str, env: Mapping[str, str | int]) -> str | int:
    def ev(node: ast.expr) -> str | int:
        if isinstance(node, ast.Name):
            return env[node.id]
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return _in_range(node.value)
        if isinstance(node, ast.BinOp):
            return _in_range(_BIN_OPS[type(node.op)](_int(ev(node.left)), _int(ev(node.right))))
        if isinstance(node, ast.UnaryOp):
            return -_int(ev(node.operand))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return _FUNCS[node.func.id](*(_int(ev(a)) for a in node.args))
        raise ValueError("unsupported expression")

    return ev(_parse_expression(body))


def _in_range(value: int) -> int:
    """Every step of an expression stays within a Java long, what Kafka stores (and no huge integers)."""
    if abs(value) > _LONG_MAX:
        raise ValueError(f"the value leaves the range of a 64-bit integer (|x| <= {_LONG_MAX})")
    return value


def _int(value: str | int) -> int:
    if isinstance(value, int):
        return value
    raise ValueError(f"{value!r} is not an integer")


def load_topics(path: Path, vars: TopicVars) -> TopicCatalog:
    """Load ``path``, fill its templates from ``vars`` and validate it.

    Raises :class:`TopicsFileError` (``<path>:<line>: <problem>``) for anything wrong with the file.
    """
    return _Loader(Path(path), vars).load()


# --------------------------------------------------------------------------------------------------
# Comparing with the cluster
# --------------------------------------------------------------------------------------------------

_DYNAMIC_TOPIC_CONFIG = 1  # DescribeConfigs config_source: set on the topic itself


@dataclass(frozen=True)
class LiveTopic:
    """What the cluster says about one topic."""

    name: str
    partitions: int
    replication_factor: int
    configs: Mapping[str, str | None] = field(default_factory=dict)  # effective values
    overrides: Mapping[str, str] = field(default_factory=dict)  # values set on the topic itself


def _normalize(key: str, value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if key == "cleanup.policy":
        return ",".join(sorted(p.strip() for p in value.split(",") if p.strip()))
    return value


def diff_topics(
    catalog: TopicCatalog, live: Mapping[str, LiveTopic], only: Set[str] | None = None
) -> list[TopicChange]:
    """The changes that bring the cluster (``live``, by topic name) in line with ``catalog``.

    ``only`` restricts the result to those topic names.
    """
    changes: list[TopicChange] = []
    for spec in catalog.specs:
        if only is not None and spec.name not in only:
            continue
        peer_problem = _co_partition_problem(catalog, spec, live)
        current = live.get(spec.name)
        if current is None:
            if peer_problem is not None:
                changes.append(
                    TopicChange("drift", spec.name, f"not created: {peer_problem}", fixable=False, role=spec.role)
                )
                continue
            settings = " ".join(f"{k}={v}" for k, v in spec.config.items())
            detail = f"partitions={spec.partitions} replication_factor={spec.replication_factor}"
            changes.append(
                TopicChange("create", spec.name, f"{detail} {settings}".strip(), fixable=True, role=spec.role)
            )
            continue
        if current.partitions != spec.partitions:
            changes.append(
                TopicChange(
                    "drift",
                    spec.name,
                    f"has {current.partitions} partitions, topics file declares {spec.partitions}",
                    fixable=False,
                    role=spec.role,
                )
            )
        if current.replication_factor != spec.replication_factor:
            changes.append(
                TopicChange(
                    "drift",
                    spec.name,
                    f"has replication factor {current.replication_factor}, "
                    f"topics file declares {spec.replication_factor}",
                    fixable=False,
                    role=spec.role,
                )
            )
        if peer_problem is not None:
            changes.append(TopicChange("drift", spec.name, peer_problem, fixable=False, role=spec.role))
        updates: dict[str, str] = {}
        had: dict[str, str | None] = {}
        shown: list[str] = []
        for key, want in spec.config.items():
            have = current.configs.get(key)
            if _normalize(key, have) != _normalize(key, want):
                updates[key], had[key] = want, have
                shown.append(f"{key} {have if have is not None else '(unset)'} -> {want}")
        if updates:
            changes.append(
                TopicChange(
                    "alter_config",
                    spec.name,
                    ", ".join(shown),
                    fixable=True,
                    role=spec.role,
                    updates=updates,
                    current=had,
                )
            )
    return changes


def _co_partition_problem(catalog: TopicCatalog, spec: TopicSpec, live: Mapping[str, LiveTopic]) -> str | None:
    """Why ``spec`` is not (or cannot be created) co-partitioned with its ``partitions_of`` peers live."""
    if spec.partitions_of is None:
        return None
    peers = [p for p in catalog.role(spec.partitions_of) if spec.sink is None or p.sink in (None, spec.sink)]
    mine = live.get(spec.name)
    count = mine.partitions if mine is not None else spec.partitions
    for peer in peers:
        theirs = live.get(peer.name)
        # A peer that is missing gets created with its declared count.
        peer_count = theirs.partitions if theirs is not None else peer.partitions
        if peer_count != count:
            peer_state = f"has {peer_count} live" if theirs is not None else f"is created with {peer_count}"
            return (
                f"{'has' if mine is not None else 'would have'} {count} partitions but "
                f"{peer.name} ({peer.role}) {peer_state}; they must be equal "
                f"(partitions_of: {spec.partitions_of})"
            )
    return None


# --------------------------------------------------------------------------------------------------
# Broker access
# --------------------------------------------------------------------------------------------------

_T = TypeVar("_T")
_SETTLE_TIMEOUT_S = 30.0  # how long apply waits for its own changes to show up in metadata/configs


class _Admin:
    """A thin wrapper over AIOKafkaAdminClient that turns responses into plain data and errors."""

    def __init__(self, bootstrap_servers: str, admin_kwargs: Mapping[str, Any]) -> None:
        self.bootstrap = bootstrap_servers
        kwargs: dict[str, Any] = {"client_id": "pipeline-topics", **admin_kwargs}
        self.request_timeout_s = float(kwargs.get("request_timeout_ms", 40_000)) / 1000
        self.client = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **kwargs)

    async def start(self) -> None:
        try:
            async with asyncio.timeout(self.request_timeout_s):
                await self.client.start()
        except TimeoutError as exc:
            raise self._unreachable(f"no answer within {self.request_timeout_s:g}s") from exc
        except (KafkaError, OSError) as exc:
            # aiokafka's bootstrap error lists resolved socket addresses; the kind of error says enough.
            raise self._unreachable(f"no broker answered ({type(exc).__name__})") from exc

    def _unreachable(self, reason: str) -> TopicsBrokerError:
        return TopicsBrokerError(
            f"cannot reach Kafka at {self.bootstrap}: {reason}", self.bootstrap, unreachable=True, reason=reason
        )

    async def close(self) -> None:
        try:
            await self.client.close()
        except Exception:  # pragma: no cover - closing must never mask the real outcome
            log.debug("closing the admin client failed", exc_info=True)

    async def call(self, what: str, op: Callable[[], Awaitable[_T]]) -> _T:
        try:
            async with asyncio.timeout(self.request_timeout_s + 5):
                return await op()
        except (KafkaError, OSError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise TopicsBrokerError(f"{what} failed on Kafka at {self.bootstrap}: {reason}", self.bootstrap) from exc

    async def metadata(self) -> dict[str, tuple[int, int]]:
        """``{topic: (partitions, replication_factor)}`` for every topic the cluster reports.

        Asks for *all* topics on purpose: asking by name would auto-create missing topics on a
        broker with ``auto.create.topics.enable=true`` (aiokafka's MetadataRequest allows it).
        """
        topics = await self.call("listing topics", self.client.describe_topics)
        out: dict[str, tuple[int, int]] = {}
        for t in topics:
            partitions = t.get("partitions") or []
            if t.get("error_code", 0) != 0 and not partitions:
                continue  # not ready yet (e.g. LEADER_NOT_AVAILABLE right after creation)
            rf = max((len(p.get("replicas") or []) for p in partitions), default=0)
            out[str(t["topic"])] = (len(partitions), rf)
        return out

    async def configs(self, names: Sequence[str]) -> dict[str, tuple[dict[str, str | None], dict[str, str]]]:
        """``{topic: (effective configs, topic-level overrides)}``."""
        if not names:
            return {}
        resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
        responses = await self.call("describing topic configs", lambda: self.client.describe_configs(resources))
        out: dict[str, tuple[dict[str, str | None], dict[str, str]]] = {}
        for response in responses:
            for res in response.to_object()["resources"]:
                name = str(res["resource_name"])
                if res["error_code"] != 0:
                    err = for_code(res["error_code"])
                    raise TopicsBrokerError(
                        f"describing configs of {name} failed: {err.__name__}: {res.get('error_message') or ''}",
                        self.bootstrap,
                    )
                effective: dict[str, str | None] = {}
                overrides: dict[str, str] = {}
                for entry in res["config_entries"]:
                    key = str(entry["config_names"])
                    value = entry["config_value"]
                    effective[key] = value
                    if "config_source" in entry:
                        dynamic = entry["config_source"] == _DYNAMIC_TOPIC_CONFIG
                    else:  # DescribeConfigs v0
                        dynamic = not entry.get("is_default", True)
                    if dynamic and value is not None and not entry.get("is_sensitive", False):
                        overrides[key] = value
                out[name] = (effective, overrides)
        return out

    async def live(self, catalog: TopicCatalog) -> dict[str, LiveTopic]:
        meta = await self.metadata()
        present = [s.name for s in catalog.specs if s.name in meta]
        configs = await self.configs(present)
        out: dict[str, LiveTopic] = {}
        for name in present:
            partitions, rf = meta[name]
            effective, overrides = configs.get(name, ({}, {}))
            out[name] = LiveTopic(name, partitions, rf, effective, overrides)
        return out

    async def create(self, specs: Sequence[TopicSpec]) -> list[str]:
        """Create ``specs``; returns the names that already existed (created concurrently)."""
        if not specs:
            return []
        new = [NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=dict(s.config)) for s in specs]
        response = await self.call(
            "creating topics",
            lambda: self.client.create_topics(new, timeout_ms=int(self.request_timeout_s * 1000)),
        )
        raced: list[str] = []
        failures: dict[str, list[str]] = {}  # error text -> topics
        for err in response.to_object()["topic_errors"]:
            code = err["error_code"]
            if code == 0:
                continue
            if code == TopicAlreadyExistsError.errno:
                raced.append(str(err["topic"]))
                continue
            message = (err.get("error_message") or "").rstrip(".")
            text = f"{for_code(code).__name__}{': ' + message if message else ''}"
            failures.setdefault(text, []).append(str(err["topic"]))
        if failures:
            raise TopicsBrokerError(
                "creating topics failed: "
                + "; ".join(f"{text} ({', '.join(names)})" for text, names in failures.items()),
                self.bootstrap,
            )
        return raced

    async def alter(self, live: Mapping[str, LiveTopic], changes: Sequence[TopicChange]) -> None:
        """Set the ``updates`` of ``changes``.

        aiokafka only speaks the legacy (non-incremental) AlterConfigs API, which *replaces* the whole
        set of topic-level overrides, so every existing override is sent along with the new values.
        """
        if not changes:
            return
        resources = []
        for c in changes:
            current = live.get(c.topic)
            merged = {**(dict(current.overrides) if current is not None else {}), **c.updates}
            resources.append(ConfigResource(ConfigResourceType.TOPIC, c.topic, merged))
        responses = await self.call("altering topic configs", lambda: self.client.alter_configs(resources))
        failures: list[str] = []
        for response in responses:
            for res in response.to_object()["resources"]:
                if res["error_code"] != 0:
                    message = res.get("error_message") or ""
                    failures.append(
                        f"{res['resource_name']}: {for_code(res['error_code']).__name__}"
                        f"{': ' + message if message else ''}"
                    )
        if failures:
            raise TopicsBrokerError("altering topic configs failed: " + "; ".join(failures), self.bootstrap)

    async def wait_until(self, what: str, done: Callable[[], Awaitable[bool]]) -> None:
        """Poll ``done`` until true; metadata and configs can lag a moment behind a change."""
        deadline = time.monotonic() + _SETTLE_TIMEOUT_S
        delay = 0.05
        while not await done():
            if time.monotonic() > deadline:
                raise TopicsBrokerError(
                    f"{what}: the change was accepted but is not visible after {_SETTLE_TIMEOUT_S:.0f}s",
                    self.bootstrap,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


async def plan_topics(catalog: TopicCatalog, bootstrap_servers: str, **admin_kwargs: Any) -> TopicPlan:
    """Compare ``catalog`` with the cluster; changes nothing."""
    admin = _Admin(bootstrap_servers, admin_kwargs)
    try:
        await admin.start()
        live = await admin.live(catalog)
        plan = TopicPlan(diff_topics(catalog, live), checked=len(catalog.specs))
        plan.orphaned_tiers = await _orphan_counts(catalog, await admin.metadata(), bootstrap_servers, admin_kwargs)
        return plan
    finally:
        await admin.close()


async def apply_topics(catalog: TopicCatalog, bootstrap_servers: str, **admin_kwargs: Any) -> TopicPlan:
    """Create missing topics and fix config values; report (and refuse) unfixable drift.

    Returns the plan with ``done`` set on what was carried out. When it returns, the created topics
    and altered configs are visible in the cluster's metadata, so a following plan reports no changes.
    """
    admin = _Admin(bootstrap_servers, admin_kwargs)
    try:
        await admin.start()
        live = await admin.live(catalog)
        changes = diff_topics(catalog, live)

        creates = [c for c in changes if c.kind == "create" and c.fixable]
        specs = {s.name: s for s in catalog.specs}
        raced = set(await admin.create([specs[c.topic] for c in creates]))
        for c in creates:
            c.done = c.topic not in raced

        alters = [c for c in changes if c.kind == "alter_config"]
        await admin.alter(live, alters)
        for c in alters:
            c.done = True

        if raced:
            # Someone else (a starting worker) created these between our look and our create: check
            # what they created like any other existing topic.
            log.info("topics created concurrently by another client: %s", ", ".join(sorted(raced)))
            await admin.wait_until("waiting for concurrently created topics", lambda: _visible(admin, raced))
            raced_live = await admin.live(catalog)
            follow_up = diff_topics(catalog, raced_live, only=raced)
            raced_alters = [c for c in follow_up if c.kind == "alter_config"]
            await admin.alter(raced_live, raced_alters)
            for c in raced_alters:
                c.done = True
            changes = [c for c in changes if c.topic not in raced or c.kind != "create"] + follow_up

        created = {c.topic for c in creates if c.done}
        if created:
            await admin.wait_until("waiting for created topics", lambda: _visible(admin, created))
        expected = {c.topic: c.updates for c in changes if c.kind == "alter_config" and c.done}
        if expected:
            await admin.wait_until("waiting for altered configs", lambda: _configs_visible(admin, expected))
        return TopicPlan(changes, checked=len(catalog.specs), applied=True)
    finally:
        await admin.close()


async def _orphan_counts(
    catalog: TopicCatalog, meta: Mapping[str, object], bootstrap_servers: str, admin_kwargs: Mapping[str, Any]
) -> dict[str, int]:
    from pipeline.observability.lag import topic_size

    kwargs = {k: v for k, v in admin_kwargs.items() if k != "client_id"}
    return {topic: await topic_size(bootstrap_servers, topic, **kwargs) for topic in catalog.orphaned_tiers(meta)}


async def _visible(admin: _Admin, names: set[str]) -> bool:
    meta = await admin.metadata()
    return all(n in meta and meta[n][0] > 0 for n in names)


async def _configs_visible(admin: _Admin, expected: Mapping[str, Mapping[str, str]]) -> bool:
    configs = await admin.configs(list(expected))
    for name, updates in expected.items():
        effective = configs.get(name, ({}, {}))[0]
        if any(_normalize(k, effective.get(k)) != _normalize(k, v) for k, v in updates.items()):
            return False
    return True
