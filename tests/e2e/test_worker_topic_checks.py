"""A worker that does not apply topics.yaml (TOPICS_AUTO_APPLY=false) still compares it with the cluster at
start: missing topics (exit 2) and topics too small for the records the pipeline writes (exit 78) stop it,
instead of a worker that runs, reports ready and consumes nothing. A real broker."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from pipeline.config import load_settings
from pipeline.topics import apply_topics, load_topics, plan_topics
from tests.e2e.conftest import Stack
from tests.support import poll, run_cli


def test_a_worker_without_auto_apply_refuses_to_start_without_its_topics(stack: Stack) -> None:
    result = run_cli("worker", env=stack.env(TOPICS_AUTO_APPLY="false"), timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "TOPICS_AUTO_APPLY=false" in result.stderr and "pipeline topics apply" in result.stderr
    assert stack.ingest_topic in result.stderr and f"{stack.prefix}sink.tsdb" in result.stderr


async def test_a_worker_without_auto_apply_refuses_a_topic_too_small_for_its_records(stack: Stack) -> None:
    env = stack.env(TOPICS_AUTO_APPLY="false")
    settings = load_settings(environ=env)
    catalog = load_topics(settings.topics_path(), settings.topic_vars())
    await apply_topics(catalog, stack.bootstrap)
    dlq = catalog.sink_dlq("tsdb").name
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, dlq, {"max.message.bytes": "1000"})])
    finally:
        await admin.close()

    async def shrunk() -> list[str]:
        plan = await plan_topics(catalog, stack.bootstrap)
        return [c.topic for c in plan.changes]

    await poll(shrunk, lambda topics: topics == [dlq], timeout=30, what="the altered topic in the plan")
    result = run_cli("worker", env=env, timeout=60)
    assert result.returncode == 78, result.stdout + result.stderr
    assert f"'{dlq}' has max.message.bytes=1000, needs" in result.stderr
    assert "INGEST_MAX_EVENT_BYTES" in result.stderr
