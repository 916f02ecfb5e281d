"""topics.yaml: loading, templating and validation (unit), and plan/apply against a real broker."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from typer.testing import CliRunner

import pipeline
import pipeline.topics as topics_mod
from pipeline.cli.topics import app as topics_cli
from pipeline.topics import (
    LiveTopic,
    SinkTopicVars,
    TopicCatalog,
    TopicPlan,
    TopicsBrokerError,
    TopicsFileError,
    TopicVars,
    apply_topics,
    default_topics_path,
    diff_topics,
    load_topics,
    plan_topics,
)
from tests.leftovers import new_uid

REPO_TOPICS = Path(pipeline.__file__).resolve().parents[1] / "topics.yaml"
WEEK_MS = "604800000"
MONTH_MS = "2592000000"

session_loop = pytest.mark.asyncio(loop_scope="session")


def make_vars(**overrides: Any) -> TopicVars:
    base: dict[str, Any] = {
        "ingest_topic": "events.ingest",
        "app_id": "pipeline",
        "sinks": (SinkTopicVars("tsdb", ("1s", "10s", "1m")), SinkTopicVars("pg", ())),
    }
    base.update(overrides)
    return TopicVars(**base)


# --------------------------------------------------------------------------------------------------
# Loading the shipped topics.yaml
# --------------------------------------------------------------------------------------------------


def test_repo_topics_file_resolves_every_role() -> None:
    cat = load_topics(REPO_TOPICS, make_vars(prefix="acme."))
    assert cat.ingest.name == "events.ingest"
    assert cat.ingest_dlq.name == "events.ingest.dlq"
    assert cat.by_hash.name == "events.ingest.by-hash"
    assert cat.dedupe_changelog.name == "pipeline-dedupe-changelog"
    assert cat.sink("tsdb").name == "acme.sink.tsdb"
    assert [s.name for s in cat.sink_retry("tsdb")] == [
        "acme.sink.tsdb.retry.1s",
        "acme.sink.tsdb.retry.10s",
        "acme.sink.tsdb.retry.1m",
    ]
    assert [s.tier for s in cat.sink_retry("tsdb")] == ["1s", "10s", "1m"]
    assert cat.sink_retry("pg") == ()
    assert cat.sink_dlq("pg").name == "acme.sink.pg.dlq"
    assert cat.sink_dlq("pg").sink == "pg"
    assert cat.sinks == ("tsdb", "pg")
    assert cat.sink_parked("pg") is not None and cat.sink_parked("pg").name == "acme.sink.pg.parked"  # type: ignore[union-attr]
    assert cat.ingest_parked is not None and cat.ingest_parked.name == "events.ingest.parked"
    assert len(cat.specs) == 5 + 2 + 3 + 2 + 2
    assert len(set(cat.names)) == len(cat.specs)
    with pytest.raises(KeyError, match="tsdb, pg"):
        cat.sink("nope")


def test_repo_topics_file_config_values() -> None:
    cat = load_topics(REPO_TOPICS, make_vars())
    for spec in cat.specs:
        assert all(isinstance(v, str) for v in spec.config.values()), spec
    assert cat.ingest.config["cleanup.policy"] == "delete"
    assert cat.ingest.config["retention.ms"] == WEEK_MS
    assert cat.ingest.config["retention.bytes"] == "-1"
    assert cat.sink("tsdb").config["retention.ms"] == WEEK_MS
    assert cat.ingest_dlq.config["retention.ms"] == MONTH_MS
    assert cat.sink_dlq("tsdb").config["retention.ms"] == MONTH_MS
    assert cat.ingest_dlq.partitions == 1


def test_changelog_retention_is_templated_from_the_window() -> None:
    day = load_topics(REPO_TOPICS, make_vars(idempotency_window_ms=86_400_000)).dedupe_changelog
    assert day.config == {
        "cleanup.policy": "compact,delete",
        "retention.ms": str(86_400_000 + 3_600_000),
        "segment.ms": "3600000",
    }
    short = load_topics(REPO_TOPICS, make_vars(idempotency_window_ms=600_000)).dedupe_changelog
    assert short.config["retention.ms"] == str(600_000 + 3_600_000)
    assert short.config["segment.ms"] == "600000"  # min(window, 1h)


def test_partition_and_replication_overrides_replace_defaults_only() -> None:
    cat = load_topics(REPO_TOPICS, make_vars(partitions=12, replication_factor=3))
    assert cat.ingest.partitions == 12
    assert cat.by_hash.partitions == 12
    assert cat.dedupe_changelog.partitions == 12  # partitions_of: by_hash
    assert cat.sink("tsdb").partitions == 12
    assert cat.ingest_dlq.partitions == 1  # explicit in the file
    assert {s.replication_factor for s in cat.specs} == {3}
    default = load_topics(REPO_TOPICS, make_vars())
    assert default.by_hash.partitions == default.dedupe_changelog.partitions == 6
    assert {s.replication_factor for s in default.specs} == {1}


def test_no_sinks_gives_no_sink_topics() -> None:
    cat = load_topics(REPO_TOPICS, make_vars(sinks=()))
    assert [s.role for s in cat.specs] == ["ingest", "ingest_dlq", "ingest_parked", "by_hash", "dedupe_changelog"]


def test_default_topics_path_is_the_packaged_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the current directory nor the environment changes the default: TOPICS_FILE goes through
    the settings model, and the catalog ships inside the package (the repo's topics.yaml links to it)."""
    from pipeline.config import load_settings

    packaged = Path(pipeline.__file__).resolve().parent / "topics.yaml"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "topics.yaml").write_text("x: 1\n")
    monkeypatch.setenv("TOPICS_FILE", "/etc/pipeline/topics.yaml")
    assert default_topics_path() == packaged
    assert packaged.is_file() and not packaged.is_symlink()
    assert REPO_TOPICS.resolve() == packaged
    assert load_settings(environ={}).topics_path() == packaged
    assert load_settings(environ={"TOPICS_FILE": "/etc/t.yaml"}).topics_path() == Path("/etc/t.yaml")


# --------------------------------------------------------------------------------------------------
# Validation: every error names the file and the right line
# --------------------------------------------------------------------------------------------------

VALID = """\
defaults:
  partitions: 6
  replication_factor: 1
topics:
  ingest:
    name: "{ingest_topic}"
    config: {cleanup.policy: delete, retention.ms: 604800000}
  ingest_dlq: {name: "{ingest_topic}.dlq", partitions: 1}
  by_hash: {name: "{ingest_topic}.by-hash"}
  dedupe_changelog:
    name: "{app_id}-dedupe-changelog"
    partitions_of: by_hash
    config:
      cleanup.policy: "compact,delete"
      retention.ms: "{idempotency_window_ms + 3600000}"
  sink: {for_each: sink, name: "{prefix}sink.{sink}"}
  sink_retry: {for_each: sink_retry_tier, name: "{prefix}sink.{sink}.retry.{tier}"}
  sink_dlq: {for_each: sink, name: "{prefix}sink.{sink}.dlq"}
"""


def _replace(old: str, new: str) -> str:
    assert old in VALID, old
    return VALID.replace(old, new, 1)


# Each case is a whole file; "#<" marks the line the error must point at.
BAD_FILES: list[tuple[str, str, str]] = [
    (
        "yaml-syntax",
        _replace('  by_hash: {name: "{ingest_topic}.by-hash"}', '  by_hash: {name: "x"\n  other: 1  #<'),
        "invalid YAML",
    ),
    (
        "yaml-duplicate-key",
        _replace("  partitions: 6\n", "  partitions: 6\n  partitions: 7  #<\n"),
        "duplicate",
    ),
    ("yaml-tab", _replace("  replication_factor: 1\n", "\treplication_factor: 1  #<\n"), "invalid YAML"),
    ("empty-file", "#<\n", "empty"),
    ("top-level-list", "- a  #<\n- b\n", "mapping"),
    ("unknown-top-key", VALID + "extra: 1  #<\n", "unknown key 'extra'"),
    (
        "unknown-defaults-key",
        _replace("  partitions: 6\n", "  partitions: 6\n  partition: 3  #<\n"),
        "'partition'",
    ),
    (
        "unknown-topic-key",
        _replace('    name: "{ingest_topic}"\n', '    name: "{ingest_topic}"\n    retention: 1  #<\n'),
        "unknown key 'retention'",
    ),
    ("zero-partitions", _replace("  partitions: 6\n", "  partitions: 0  #<\n"), "positive integer"),
    (
        "negative-partitions",
        _replace('{name: "{ingest_topic}.dlq", partitions: 1}', '{name: "{ingest_topic}.dlq", partitions: -1}  #<'),
        "positive integer",
    ),
    ("string-partitions", _replace("  partitions: 6\n", '  partitions: "6"  #<\n'), "positive integer"),
    ("float-partitions", _replace("  partitions: 6\n", "  partitions: 1.5  #<\n"), "positive integer"),
    ("bool-partitions", _replace("  partitions: 6\n", "  partitions: true  #<\n"), "positive integer"),
    ("zero-rf", _replace("  replication_factor: 1\n", "  replication_factor: 0  #<\n"), "replication_factor"),
    (
        "topic-rf-not-int",
        _replace('  by_hash: {name: "{ingest_topic}.by-hash"}', '  by_hash: {name: "b", replication_factor: x}  #<'),
        "replication_factor must be a positive integer",
    ),
    (
        "unknown-variable-in-name",
        _replace('  by_hash: {name: "{ingest_topic}.by-hash"}', '  by_hash: {name: "{ingest}.by-hash"}  #<'),
        "unknown template variable {ingest}",
    ),
    (
        "unknown-variable-in-config",
        _replace('retention.ms: "{idempotency_window_ms + 3600000}"', 'retention.ms: "{window_ms}"  #<'),
        "unknown template variable {window_ms}",
    ),
    (
        "sink-variable-without-for-each",
        _replace('  by_hash: {name: "{ingest_topic}.by-hash"}', '  by_hash: {name: "{sink}.by-hash"}  #<'),
        "{sink} is only available with for_each",
    ),
    (
        "tier-variable-in-sink-loop",
        _replace('name: "{prefix}sink.{sink}.dlq"}', 'name: "{prefix}sink.{sink}.{tier}.dlq"}  #<'),
        "{tier} is only available with for_each: sink_retry_tier",
    ),
    (
        "string-variable-in-arithmetic",
        _replace('retention.ms: "{idempotency_window_ms + 3600000}"', 'retention.ms: "{app_id + 1}"  #<'),
        "{app_id} is a string",
    ),
    (
        "bad-expression",
        _replace(
            'retention.ms: "{idempotency_window_ms + 3600000}"',
            'retention.ms: "{idempotency_window_ms ** 2}"  #<',
        ),
        "invalid template",
    ),
    (
        "unbalanced-brace",
        _replace('  by_hash: {name: "{ingest_topic}.by-hash"}', '  by_hash: {name: "{ingest_topic.by-hash"}  #<'),
        "unbalanced",
    ),
    (
        "per-sink-role-without-for-each",
        _replace('  sink: {for_each: sink, name: "{prefix}sink.{sink}"}', '  sink: {name: "{prefix}sink"}  #<'),
        "needs 'for_each: sink'",
    ),
    (
        "for-each-on-single-role",
        _replace('  by_hash: {name: "{ingest_topic}.by-hash"}', '  by_hash: {for_each: sink, name: "{sink}.h"}  #<'),
        "cannot have for_each",
    ),
    (
        "unknown-partitions-of",
        _replace("    partitions_of: by_hash\n", "    partitions_of: by_hsah  #<\n"),
        "unknown role 'by_hsah'",
    ),
    (
        "partitions-of-differs",
        _replace("    partitions_of: by_hash\n", "    partitions_of: by_hash\n    partitions: 3  #<\n"),
        "differs from partitions_of 'by_hash'",
    ),
    (
        "changelog-not-copartitioned",
        _replace("    partitions_of: by_hash\n", "    partitions: 12  #<\n"),
        "'by_hash' has 6",
    ),
    (
        "partitions-of-cycle",
        VALID + "  a: {name: a, partitions_of: b}\n  b: {name: b, partitions_of: a}  #<\n",
        "cycle",
    ),
    (
        "missing-role",
        _replace('  ingest_dlq: {name: "{ingest_topic}.dlq", partitions: 1}\n', "").replace(
            "topics:\n", "topics:  #<\n"
        ),
        "missing required role(s): ingest_dlq",
    ),
    (
        "missing-name",
        _replace('  by_hash: {name: "{ingest_topic}.by-hash"}', "  by_hash: {partitions: 6}  #<"),
        "has no 'name'",
    ),
    (
        "duplicate-resolved-name",
        _replace('name: "{prefix}sink.{sink}.dlq"}', 'name: "{prefix}sink.{sink}"}  #<'),
        "already used by topic 'sink'",
    ),
    (
        "duplicate-across-roles",
        _replace('  by_hash: {name: "{ingest_topic}.by-hash"}', '  by_hash: {name: "{ingest_topic}"}  #<'),
        "already used by topic 'ingest' (line 6)",
    ),
    (
        "invalid-topic-name",
        _replace('  by_hash: {name: "{ingest_topic}.by-hash"}', '  by_hash: {name: "by hash"}  #<'),
        "not a valid Kafka topic name",
    ),
    (
        "unknown-kafka-config",
        _replace('      cleanup.policy: "compact,delete"\n', "      cleanup.polcy: compact  #<\n"),
        "unknown Kafka topic config 'cleanup.polcy'",
    ),
    (
        "non-integer-retention",
        _replace("config: {cleanup.policy: delete, retention.ms: 604800000}", "config: {retention.ms: 7d}  #<"),
        "must be an integer",
    ),
    (
        "bad-cleanup-policy",
        _replace('      cleanup.policy: "compact,delete"\n', "      cleanup.policy: compcat  #<\n"),
        "cleanup.policy must be",
    ),
    (
        "negative-retention",
        _replace("config: {cleanup.policy: delete, retention.ms: 604800000}", "config: {retention.ms: -5}  #<"),
        "retention.ms must be -1 (unlimited) or a number of ms >= 0, got -5",
    ),
    (
        "negative-retention-bytes-from-an-expression",
        _replace(
            'retention.ms: "{idempotency_window_ms + 3600000}"',
            'retention.bytes: "{0 - idempotency_window_ms}"  #<',
        ),
        "retention.bytes must be -1 (unlimited)",
    ),
    (
        "retention-beyond-a-long",
        _replace(
            "config: {cleanup.policy: delete, retention.ms: 604800000}", "config: {retention.ms: 1" + "0" * 30 + "}  #<"
        ),
        "retention.ms must be",
    ),
    (
        "huge-expression",
        _replace(
            'retention.ms: "{idempotency_window_ms + 3600000}"',
            'retention.ms: "{idempotency_window_ms' + " + 1" * 100_000 + '}"  #<',
        ),
        "longer than 200 characters",
    ),
    (
        "expression-overflowing-a-long",
        _replace(
            'retention.ms: "{idempotency_window_ms + 3600000}"',
            'retention.ms: "{idempotency_window_ms * 1000000000 * 1000000000 * 1000000000}"  #<',
        ),
        "range of a 64-bit integer",
    ),
    (
        "config-not-a-mapping",
        _replace("config: {cleanup.policy: delete, retention.ms: 604800000}", "config: [1, 2]  #<"),
        "must be a mapping",
    ),
]


def _marked_line(text: str) -> int:
    lines = [i for i, line in enumerate(text.splitlines(), start=1) if "#<" in line]
    assert len(lines) == 1, f"exactly one #< marker expected, got {lines}"
    return lines[0]


def test_valid_fixture_loads(tmp_path: Path) -> None:
    path = tmp_path / "topics.yaml"
    path.write_text(VALID)
    cat = load_topics(path, make_vars(idempotency_window_ms=1000))
    assert cat.dedupe_changelog.config["retention.ms"] == "3601000"
    assert cat.ingest.config["retention.ms"] == WEEK_MS


def test_unknown_for_each_line(tmp_path: Path) -> None:
    text = _replace("{for_each: sink_retry_tier,", "{for_each: retry_tier,")
    path = tmp_path / "topics.yaml"
    path.write_text(text)
    with pytest.raises(TopicsFileError) as info:
        load_topics(path, make_vars())
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "retry_tier," in s)
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert "unknown for_each 'retry_tier'" in str(info.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [pytest.param(text, frag, id=case_id) for case_id, text, frag in BAD_FILES],
)
def test_malformed_file_reports_path_and_line(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "topics.yaml"
    path.write_text(text)
    with pytest.raises(TopicsFileError) as info:
        load_topics(path, make_vars())
    message = str(info.value)
    line = _marked_line(text)
    assert message.startswith(f"{path}:{line}: "), message
    assert fragment in message, message
    assert info.value.line == line
    assert "\n" not in message


def test_error_uses_the_path_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("topics.yaml").write_text(VALID + "bogus: 1\n")
    with pytest.raises(TopicsFileError, match=r"^topics\.yaml:19: unknown key 'bogus'"):
        load_topics(Path("topics.yaml"), make_vars())


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(TopicsFileError, match=rf"^{path}:1: cannot read topics file"):
        load_topics(path, make_vars())


def test_bad_resolved_name_from_vars(tmp_path: Path) -> None:
    path = tmp_path / "topics.yaml"
    path.write_text(VALID)
    with pytest.raises(TopicsFileError, match=rf"^{path}:16: .*'sink\.a/b' is not a valid Kafka topic name"):
        load_topics(path, make_vars(sinks=(SinkTopicVars("a/b"),)))


def test_duplicate_tier_labels_are_duplicate_names(tmp_path: Path) -> None:
    path = tmp_path / "topics.yaml"
    path.write_text(VALID)
    with pytest.raises(TopicsFileError, match=rf"^{path}:17: .*already used by topic 'sink_retry' \(line 17\)"):
        load_topics(path, make_vars(sinks=(SinkTopicVars("s", ("1s", "1s")),)))


def test_templates_support_escapes_and_min_max(tmp_path: Path) -> None:
    text = _replace(
        'retention.ms: "{idempotency_window_ms + 3600000}"',
        'retention.ms: "{max(idempotency_window_ms * 2, 10 * 60000) // 1}"\n'
        '      segment.ms: "{min(idempotency_window_ms, 3_600_000)}"',
    )
    path = tmp_path / "topics.yaml"
    path.write_text(text)
    cat = load_topics(path, make_vars(idempotency_window_ms=1000))
    assert cat.dedupe_changelog.config["retention.ms"] == "600000"
    assert cat.dedupe_changelog.config["segment.ms"] == "1000"


def test_defaults_config_is_inherited_and_overridable(tmp_path: Path) -> None:
    text = _replace(
        "  replication_factor: 1\n",
        "  replication_factor: 1\n  config: {compression.type: zstd, retention.ms: 1000}\n",
    )
    path = tmp_path / "topics.yaml"
    path.write_text(text)
    cat = load_topics(path, make_vars())
    assert cat.by_hash.config == {"compression.type": "zstd", "retention.ms": "1000"}
    assert cat.ingest.config["retention.ms"] == WEEK_MS
    assert cat.ingest.config["compression.type"] == "zstd"


# --------------------------------------------------------------------------------------------------
# Diffing (no broker)
# --------------------------------------------------------------------------------------------------


def _live_for(cat: TopicCatalog, **changes: dict[str, Any]) -> dict[str, LiveTopic]:
    """A live view that matches ``cat`` exactly, with per-role field overrides."""
    live: dict[str, LiveTopic] = {}
    for spec in cat.specs:
        fields: dict[str, Any] = {
            "partitions": spec.partitions,
            "replication_factor": spec.replication_factor,
            "configs": dict(spec.config),
            "overrides": dict(spec.config),
        }
        fields.update(changes.get(spec.role, {}))
        if fields.pop("missing", False):
            continue
        live[spec.name] = LiveTopic(spec.name, **fields)
    return live


def test_diff_in_sync_and_list_order_insensitive() -> None:
    cat = load_topics(REPO_TOPICS, make_vars())
    live = _live_for(cat)
    changelog = cat.dedupe_changelog.name
    live[changelog] = LiveTopic(changelog, 6, 1, {**cat.dedupe_changelog.config, "cleanup.policy": "delete, compact"})
    assert diff_topics(cat, live) == []
    plan = TopicPlan([], checked=len(cat.specs))
    assert plan.render().startswith("no changes")
    assert not plan.has_unfixable_drift


def test_diff_partition_drift_both_directions_is_unfixable() -> None:
    cat = load_topics(REPO_TOPICS, make_vars())
    live = _live_for(cat, ingest={"partitions": 3}, sink={"partitions": 12}, ingest_dlq={"replication_factor": 3})
    changes = diff_topics(cat, live)
    drift = {(c.topic, c.detail) for c in changes}
    assert (cat.ingest.name, "has 3 partitions, topics file declares 6") in drift
    assert (cat.sink("tsdb").name, "has 12 partitions, topics file declares 6") in drift
    assert (cat.ingest_dlq.name, "has replication factor 3, topics file declares 1") in drift
    assert all(c.kind == "drift" and not c.fixable for c in changes)
    plan = TopicPlan(changes)
    assert plan.has_unfixable_drift
    assert len(changes) == 4  # both sinks' topics have 12
    assert "plan: 0 to create, 0 to alter, 4 unfixable drift" in plan.render()


def test_diff_config_change_shows_old_and_new() -> None:
    cat = load_topics(REPO_TOPICS, make_vars())
    max_bytes = cat.ingest.config["max.message.bytes"]
    live = _live_for(
        cat, ingest={"configs": {"cleanup.policy": "delete", "retention.ms": "1000", "max.message.bytes": max_bytes}}
    )
    (change,) = diff_topics(cat, live)
    assert change.kind == "alter_config" and change.fixable
    assert change.updates == {"retention.ms": WEEK_MS, "retention.bytes": "-1"}
    assert f"retention.ms 1000 -> {WEEK_MS}" in change.detail
    assert "retention.bytes (unset) -> -1" in change.detail
    assert f"~ would alter {cat.ingest.name}" in TopicPlan([change]).render()


def test_diff_changelog_must_match_live_by_hash() -> None:
    # Both declared 3 (KAFKA_TOPIC_PARTITIONS=3) but live by-hash has 6 and the changelog 3.
    cat = load_topics(REPO_TOPICS, make_vars(partitions=3))
    live = _live_for(cat, by_hash={"partitions": 6})
    changes = diff_topics(cat, live)
    by_topic = {c.topic: c for c in changes}
    assert set(by_topic) == {cat.by_hash.name, cat.dedupe_changelog.name}
    assert "has 6 partitions" in by_topic[cat.by_hash.name].detail
    assert f"{cat.by_hash.name} (by_hash) has 6 live" in by_topic[cat.dedupe_changelog.name].detail
    assert not any(c.fixable for c in changes)


def test_diff_refuses_to_create_changelog_next_to_drifted_by_hash() -> None:
    cat = load_topics(REPO_TOPICS, make_vars())
    live = _live_for(cat, by_hash={"partitions": 3}, dedupe_changelog={"missing": True})
    changes = diff_topics(cat, live)
    changelog = [c for c in changes if c.topic == cat.dedupe_changelog.name]
    assert len(changelog) == 1
    assert changelog[0].kind == "drift" and not changelog[0].fixable
    assert changelog[0].detail.startswith("not created:")


# --------------------------------------------------------------------------------------------------
# CLI (no broker needed)
# --------------------------------------------------------------------------------------------------


def _fake_settings(monkeypatch: pytest.MonkeyPatch, vars: TopicVars, bootstrap: str) -> None:
    kafka = types.SimpleNamespace(
        bootstrap_servers=bootstrap,
        servers=[bootstrap],
        addresses=lambda: [(bootstrap.rpartition(":")[0], int(bootstrap.rpartition(":")[2]))],
        client_id="pipeline",
        admin_kwargs=lambda: {"request_timeout_ms": 5000},
        client_kwargs=lambda: {},  # what pipeline.kafka_access's check connects with
        file_secrets=lambda: [],  # secrets read from mounted files, for the redactor
    )
    settings = types.SimpleNamespace(topic_vars=lambda: vars, kafka=kafka, topics_file=None)
    module = types.ModuleType("pipeline.config")
    module.load_settings_with_provenance = lambda config=None: (  # type: ignore[attr-defined]
        settings,
        types.SimpleNamespace(warnings=[]),
    )
    monkeypatch.setitem(sys.modules, "pipeline.config", module)


def test_cli_bad_file_exits_1_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_settings(monkeypatch, make_vars(), "127.0.0.1:1")
    path = tmp_path / "topics.yaml"
    path.write_text(VALID.replace("  partitions: 6\n", "  partitions: 0\n"))
    result = CliRunner().invoke(topics_cli, ["plan", "--file", str(path)])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {path}:2: defaults.partitions must be a positive integer, got 0"
    assert result.stdout == ""


def test_cli_unreachable_broker_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_settings(monkeypatch, make_vars(), "127.0.0.1:1")
    result = CliRunner().invoke(topics_cli, ["apply", "--file", str(REPO_TOPICS)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "KAFKA_BOOTSTRAP_SERVERS" in lines[0] and "127.0.0.1:1" in lines[0]
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------------------------------
# Against a real broker
# --------------------------------------------------------------------------------------------------


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def admin(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="test-topics")
    await client.start()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def unique_vars() -> Iterator[TopicVars]:
    u = new_uid()
    yield TopicVars(
        ingest_topic=f"t{u}.ingest",
        app_id=f"t{u}-app",
        sinks=(SinkTopicVars("tsdb", ("1s", "10s")), SinkTopicVars("pg", ())),
        prefix=f"t{u}.",
        idempotency_window_ms=600_000,
        partitions=3,
    )


@pytest.fixture
async def catalog(unique_vars: TopicVars, admin: AIOKafkaAdminClient) -> AsyncIterator[TopicCatalog]:
    cat = load_topics(REPO_TOPICS, unique_vars)
    yield cat
    existing = set(await admin.list_topics())
    leftovers = [n for n in cat.names if n in existing]
    if leftovers:
        await admin.delete_topics(leftovers)


async def live_state(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, tuple[int, int, dict[str, str]]]:
    meta = {t["topic"]: t for t in await admin.describe_topics() if t["topic"] in names and t["partitions"]}
    out: dict[str, tuple[int, int, dict[str, str]]] = {}
    if not meta:
        return out
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in meta])
    for response in responses:
        for res in response.to_object()["resources"]:
            t = meta[res["resource_name"]]
            configs = {e["config_names"]: e["config_value"] for e in res["config_entries"]}
            out[t["topic"]] = (len(t["partitions"]), len(t["partitions"][0]["replicas"]), configs)
    return out


async def create_by_hand(admin: AIOKafkaAdminClient, name: str, partitions: int, **configs: str) -> None:
    response = await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs)])
    assert all(code == 0 for _, code, *_ in response.topic_errors), response
    await eventually(lambda: _exists(admin, name), f"{name} to appear")


async def _exists(admin: AIOKafkaAdminClient, name: str) -> bool:
    return any(t["topic"] == name and t["partitions"] for t in await admin.describe_topics())


async def plan_until(
    catalog: TopicCatalog, bootstrap: str, predicate: Callable[[TopicPlan], bool], what: str
) -> TopicPlan:
    """Plan repeatedly until ``predicate`` holds (a hand-made change can take a moment to show)."""
    result: list[TopicPlan] = []

    async def check() -> bool:
        result[:] = [await plan_topics(catalog, bootstrap)]
        return predicate(result[0])

    await eventually(check, what)
    return result[0]


@session_loop
async def test_apply_creates_everything(
    catalog: TopicCatalog, kafka_bootstrap: str, admin: AIOKafkaAdminClient
) -> None:
    before = await plan_topics(catalog, kafka_bootstrap)
    assert [c.kind for c in before.changes] == ["create"] * len(catalog.specs)
    assert "would create" in before.render()
    assert await live_state(admin, list(catalog.names)) == {}  # plan changed nothing

    result = await apply_topics(catalog, kafka_bootstrap)
    assert result.applied and not result.has_unfixable_drift
    assert sorted(c.topic for c in result.changes if c.done) == sorted(catalog.names)
    assert f"applied: {len(catalog.specs)} created" in result.render()

    live = await live_state(admin, list(catalog.names))
    assert set(live) == set(catalog.names)
    for spec in catalog.specs:
        partitions, rf, configs = live[spec.name]
        assert (partitions, rf) == (spec.partitions, spec.replication_factor), spec.name
        for key, value in spec.config.items():
            assert configs[key] == value, (spec.name, key)
    changelog = live[catalog.dedupe_changelog.name]
    assert changelog[0] == live[catalog.by_hash.name][0] == 3
    assert changelog[2]["cleanup.policy"] == "compact,delete"
    assert changelog[2]["retention.ms"] == str(600_000 + 3_600_000)
    assert changelog[2]["segment.ms"] == "600000"


@session_loop
async def test_apply_twice_changes_nothing(catalog: TopicCatalog, kafka_bootstrap: str) -> None:
    first = await apply_topics(catalog, kafka_bootstrap)
    assert len(first.changes) == len(catalog.specs)
    second = await apply_topics(catalog, kafka_bootstrap)
    assert second.changes == []
    assert second.render() == f"no changes: all {len(catalog.specs)} topics match the topics file"
    assert (await plan_topics(catalog, kafka_bootstrap)).changes == []


@session_loop
async def test_config_drift_is_planned_and_fixed(
    catalog: TopicCatalog, kafka_bootstrap: str, admin: AIOKafkaAdminClient
) -> None:
    await apply_topics(catalog, kafka_bootstrap)
    name = catalog.ingest.name
    # By hand: shorter retention, plus an override topics.yaml does not manage (must survive apply).
    hand = {
        "cleanup.policy": "delete",
        "retention.ms": "1000",
        "retention.bytes": "-1",
        "max.message.bytes": catalog.ingest.config["max.message.bytes"],
        "segment.ms": "3600000",
    }
    (response,) = await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, hand)])
    assert response.to_object()["resources"][0]["error_code"] == 0

    plan = await plan_until(catalog, kafka_bootstrap, lambda p: bool(p.changes), "the hand-made change")
    (change,) = plan.changes
    assert (change.kind, change.topic, change.fixable) == ("alter_config", name, True)
    assert change.updates == {"retention.ms": WEEK_MS}
    assert f"retention.ms 1000 -> {WEEK_MS}" in plan.render()
    assert not plan.has_unfixable_drift

    applied = await apply_topics(catalog, kafka_bootstrap)
    assert [(c.kind, c.done) for c in applied.changes] == [("alter_config", True)]
    assert "~ altered" in applied.render()
    assert (await plan_topics(catalog, kafka_bootstrap)).changes == []
    configs = (await live_state(admin, [name]))[name][2]
    assert configs["retention.ms"] == WEEK_MS
    assert configs["segment.ms"] == "3600000"


@session_loop
async def test_partition_drift_is_reported_not_fixed(
    catalog: TopicCatalog, kafka_bootstrap: str, admin: AIOKafkaAdminClient
) -> None:
    name = catalog.sink("tsdb").name
    await create_by_hand(admin, name, 1, **dict(catalog.sink("tsdb").config))

    plan = await plan_topics(catalog, kafka_bootstrap)
    assert plan.has_unfixable_drift
    drift = [c for c in plan.changes if c.kind == "drift"]
    assert [(c.topic, c.detail) for c in drift] == [(name, "has 1 partitions, topics file declares 3")]

    result = await apply_topics(catalog, kafka_bootstrap)
    assert result.has_unfixable_drift
    assert [c.topic for c in result.changes if not c.fixable] == [name]
    created = {c.topic for c in result.changes if c.kind == "create" and c.done}
    assert created == set(catalog.names) - {name}
    assert (await live_state(admin, [name]))[name][0] == 1  # left alone
    again = await apply_topics(catalog, kafka_bootstrap)
    assert [c.kind for c in again.changes] == ["drift"]


@session_loop
async def test_changelog_partition_mismatch_is_detected(
    catalog: TopicCatalog, kafka_bootstrap: str, admin: AIOKafkaAdminClient
) -> None:
    # As if a worker with other settings had created the changelog first.
    changelog = catalog.dedupe_changelog.name
    await create_by_hand(admin, changelog, 2, **{"cleanup.policy": "compact"})

    result = await apply_topics(catalog, kafka_bootstrap)
    assert result.has_unfixable_drift
    details = [c.detail for c in result.changes if c.topic == changelog and c.kind == "drift"]
    assert "has 2 partitions, topics file declares 3" in details
    assert any(f"has 2 partitions but {catalog.by_hash.name} (by_hash) is created with 3" in d for d in details)
    again = await plan_topics(catalog, kafka_bootstrap)
    assert any(f"{catalog.by_hash.name} (by_hash) has 3 live" in c.detail for c in again.changes)
    live = await live_state(admin, [changelog, catalog.by_hash.name])
    assert live[changelog][0] == 2 and live[catalog.by_hash.name][0] == 3


@session_loop
async def test_changelog_not_created_next_to_drifted_by_hash(
    catalog: TopicCatalog, kafka_bootstrap: str, admin: AIOKafkaAdminClient
) -> None:
    await create_by_hand(admin, catalog.by_hash.name, 5)
    result = await apply_topics(catalog, kafka_bootstrap)
    changelog = [c for c in result.changes if c.topic == catalog.dedupe_changelog.name]
    assert [(c.kind, c.fixable, c.done) for c in changelog] == [("drift", False, False)]
    assert "not created" in changelog[0].detail
    assert catalog.dedupe_changelog.name not in await live_state(admin, [catalog.dedupe_changelog.name])


@session_loop
async def test_apply_tolerates_topic_created_concurrently(
    catalog: TopicCatalog, kafka_bootstrap: str, admin: AIOKafkaAdminClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The ingest topic "appears" between apply's look and its create (a racing worker), with a
    # retention that differs from topics.yaml: apply must not fail, and must fix the config.
    name = catalog.ingest.name
    await create_by_hand(admin, name, 3, **{**catalog.ingest.config, "retention.ms": "5000"})
    real_metadata = topics_mod._Admin.metadata
    calls = 0

    async def hide_on_first_look(self: Any) -> dict[str, tuple[int, int]]:
        nonlocal calls
        calls += 1
        meta = await real_metadata(self)
        if calls == 1:
            meta.pop(name, None)
        return meta

    monkeypatch.setattr(topics_mod._Admin, "metadata", hide_on_first_look)
    result = await apply_topics(catalog, kafka_bootstrap)
    monkeypatch.undo()

    assert not result.has_unfixable_drift
    assert not any(c.topic == name and c.kind == "create" for c in result.changes)
    fixes = [c for c in result.changes if c.topic == name]
    assert [(c.kind, c.done, c.updates) for c in fixes] == [("alter_config", True, {"retention.ms": WEEK_MS})]
    assert (await plan_topics(catalog, kafka_bootstrap)).changes == []


@session_loop
async def test_unreachable_broker() -> None:
    cat = load_topics(REPO_TOPICS, make_vars())
    for op in (plan_topics, apply_topics):
        with pytest.raises(TopicsBrokerError) as info:
            await op(cat, "127.0.0.1:1", request_timeout_ms=5000)
        assert info.value.unreachable
        assert "127.0.0.1:1" in str(info.value)


@session_loop
async def test_cli_apply_then_drift_exit_codes(
    unique_vars: TopicVars,
    catalog: TopicCatalog,
    kafka_bootstrap: str,
    admin: AIOKafkaAdminClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_settings(monkeypatch, unique_vars, kafka_bootstrap)
    runner = CliRunner()
    # CliRunner runs the command synchronously and the command calls asyncio.run: use a thread.
    result = await asyncio.to_thread(runner.invoke, topics_cli, ["apply", "--file", str(REPO_TOPICS)])
    assert result.exit_code == 0, result.output
    assert "created" in result.stdout
    result = await asyncio.to_thread(runner.invoke, topics_cli, ["plan", "--file", str(REPO_TOPICS)])
    assert result.exit_code == 0
    assert result.stdout.startswith("no changes")

    # KAFKA_TOPIC_PARTITIONS changed after the topics were created.
    _fake_settings(monkeypatch, dataclasses.replace(unique_vars, partitions=4), kafka_bootstrap)
    result = await asyncio.to_thread(runner.invoke, topics_cli, ["plan", "--file", str(REPO_TOPICS)])
    assert result.exit_code == 2, result.output
    assert "! drift" in result.stdout
    assert result.stderr.startswith("error: unfixable drift")


def test_queue_max_bytes_becomes_the_sink_topics_retention_bytes() -> None:
    from pipeline.config import load_settings
    from pipeline.topics import default_topics_path

    settings = load_settings(environ={"TSDB_QUEUE_MAX_BYTES": str(6 * 1024**3), "KAFKA_TOPIC_PARTITIONS": "6"})
    catalog = load_topics(default_topics_path(), settings.topic_vars())
    assert catalog.sink("tsdb").config["retention.bytes"] == str(1024**3)  # per partition
    plain = load_topics(default_topics_path(), load_settings(environ={}).topic_vars())
    assert plain.sink("tsdb").config["retention.bytes"] == "-1"
