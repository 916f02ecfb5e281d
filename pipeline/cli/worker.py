"""`pipeline worker`: run the Faust worker (ingest, dedupe and one delivery agent per enabled sink)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from pipeline import gc_tuning
from pipeline.cli.common import EX_CONFIG, ConfigOption, fail, settings_or_exit
from pipeline.config import ConfigError, Settings
from pipeline.delivery.consumer import check_poll_interval
from pipeline.kafka_access import KafkaAccessError, check_kafka_access
from pipeline.limits import check_cluster_sizes, check_limits
from pipeline.logging import configure_logging, logging_dict_config
from pipeline.topics import TopicCatalog, TopicsBrokerError, TopicsError, apply_topics, load_topics, plan_topics

log = structlog.get_logger("pipeline.worker")


def worker(config: Path | None = ConfigOption) -> None:
    """Run a worker. Scale out by running more (up to the partition count); each needs its own
    PIPELINE_DATA_DIR (RocksDB) and, with the web server on, its own WEB_PORT."""
    settings, provenance = settings_or_exit(config, echo_warnings=False)
    try:
        settings.check_runnable()
        for sink in settings.enabled_sinks():
            check_poll_interval(sink, settings.kafka)  # max.poll.interval.ms covers one delivery round
    except ConfigError as exc:
        fail(f"config: {exc}", EX_CONFIG)
    if settings.web_enabled:
        from pipeline.web.server import bind_problem

        problem = bind_problem(settings.web_host, settings.web_port)
        if problem is not None:
            fail(f"config: {problem}", EX_CONFIG)
    configure_logging(settings.log_level, settings.log_format)
    for warning in provenance.warnings:
        log.warning("config warning", problem=warning)
    try:
        catalog = load_topics(settings.topics_path(), settings.topic_vars())
    except TopicsError as exc:
        fail(str(exc))
    try:
        check_limits(settings.max_event_bytes, catalog)
    except ConfigError as exc:
        fail(f"config: {exc}", EX_CONFIG)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(check_kafka_access(settings.kafka))
    except KafkaAccessError as exc:
        fail(str(exc), EX_CONFIG)
    check_topics(loop, settings, catalog)

    import faust

    from agents.app import build_app

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    pipeline = build_app(settings, catalog)
    gc_tuning.tune(settings.gc_gen0_threshold)
    log.info(
        "worker starting",
        app_id=settings.app_id,
        ingest=catalog.ingest.name,
        sinks=[s.name for s in settings.enabled_sinks()],
        data_dir=str(settings.data_dir),
        idempotency_window_sec=settings.idempotency_window_sec,
    )
    faust.Worker(
        pipeline.app,
        loop=loop,
        loglevel=settings.log_level,
        logging_config=logging_dict_config(settings.log_level, settings.log_format),
        quiet=True,
    ).execute_from_commandline()


def check_topics(loop: asyncio.AbstractEventLoop, settings: Settings, catalog: TopicCatalog) -> None:
    """Apply topics.yaml (TOPICS_AUTO_APPLY) or only compare it with the cluster; refuse to start on drift
    apply must not fix, and, when nothing is applied, on a missing topic (a worker without its topics
    would run and consume nothing) or one too small for the records it must take (exit 78)."""
    admin = settings.kafka.admin_kwargs()
    action = apply_topics if settings.topics_auto_apply else plan_topics
    try:
        plan = loop.run_until_complete(action(catalog, settings.kafka.bootstrap_servers, **admin))
    except TopicsBrokerError as exc:
        if settings.topics_auto_apply:
            fail(str(exc))
        # Least privilege: workers of a deploy that applies topics itself may not describe configs.
        log.warning("cannot compare the topics with topics.yaml; starting without that check", error=str(exc))
        return
    except TopicsError as exc:
        fail(str(exc))
    if plan.has_unfixable_drift:
        fail("topics differ from topics.yaml in ways apply must not fix:\n" + plan.render(), 2)
    if settings.topics_auto_apply:
        if not plan.in_sync:
            log.info("topics applied", changes=[c.detail for c in plan.changes])
        return
    missing = [c.topic for c in plan.changes if c.kind == "create"]
    if missing:
        fail(
            f"TOPICS_AUTO_APPLY=false and {len(missing)} topic(s) of topics.yaml are missing: "
            + ", ".join(missing)
            + "; create them with `pipeline topics apply` (or set TOPICS_AUTO_APPLY=true)",
            2,
        )
    try:
        check_cluster_sizes(plan, settings.max_event_bytes)
    except ConfigError as exc:
        fail(f"config: {exc}", EX_CONFIG)
    if not plan.in_sync:
        log.warning(
            "topic configs differ from topics.yaml; left as they are (TOPICS_AUTO_APPLY=false)",
            changes=[f"{c.topic}: {c.detail}" for c in plan.changes],
        )
