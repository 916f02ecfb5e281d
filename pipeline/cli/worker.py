"""`pipeline worker`: run the Faust worker (ingest, dedupe and one delivery agent per enabled sink)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from pipeline import gc_tuning
from pipeline.cli.common import EX_CONFIG, ConfigOption, fail, settings_or_exit
from pipeline.config import ConfigError
from pipeline.delivery.consumer import check_poll_interval
from pipeline.kafka_access import KafkaAccessError, check_kafka_access
from pipeline.limits import check_limits
from pipeline.logging import configure_logging, logging_dict_config
from pipeline.topics import TopicsError, apply_topics, load_topics

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
    if settings.topics_auto_apply:
        try:
            plan = loop.run_until_complete(
                apply_topics(catalog, settings.kafka.bootstrap_servers, **settings.kafka.admin_kwargs())
            )
        except TopicsError as exc:
            fail(str(exc))
        if plan.has_unfixable_drift:
            fail("topics differ from topics.yaml in ways apply must not fix:\n" + plan.render(), 2)
        if not plan.in_sync:
            log.info("topics applied", changes=[c.detail for c in plan.changes])

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
