"""The worker's Kafka consumer runs in the worker's own event loop (agents.consumer.InLoopConsumerThread),
on the real broker: no second thread, calls made in place, and a stop that closes the consumer and leaves
every other task of the loop alone (mode's thread service cancels all tasks of its loop when it stops)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from agents.app import build_app
from agents.consumer import InLoopConsumerThread
from pipeline.config import load_settings
from pipeline.topics import load_topics
from tests.e2e.conftest import Stack


async def test_the_consumer_runs_in_the_worker_loop_and_stops_alone(stack: Stack) -> None:
    settings = load_settings(environ=stack.env(PIPELINE_DATA_DIR=str(stack.workdir / "data")))
    pipeline = build_app(settings, load_topics(settings.topics_path(), settings.topic_vars()))
    thread: Any = in_loop_thread(pipeline.app.consumer)
    loop = asyncio.get_running_loop()
    bystander = asyncio.create_task(asyncio.sleep(3600))
    threads_before = set(threading.enumerate())
    await asyncio.wait_for(thread.start(), timeout=60)
    try:
        assert set(threading.enumerate()) == threads_before, "the consumer started a thread"
        consumer = thread._ensure_consumer()
        stopped: list[bool] = []
        stop = consumer.stop

        async def stopping() -> None:
            stopped.append(True)
            await stop()

        consumer.stop = stopping
        assert consumer._client._loop is loop
        assert await thread.call_thread(threading.current_thread) is threading.current_thread()
        assert await thread.call_thread(asyncio.get_running_loop) is loop
        # A real broker call goes through it: the cluster's metadata, fetched in place.
        assert stack.ingest_topic not in await thread.call_thread(consumer.topics)
    finally:
        await asyncio.wait_for(thread.stop(), timeout=60)
    assert stopped, "the aiokafka consumer was not stopped"
    assert not bystander.done(), "stopping the consumer cancelled a task of the worker's loop"
    bystander.cancel()


def in_loop_thread(app_consumer: Any) -> InLoopConsumerThread:
    thread = app_consumer._thread
    assert isinstance(thread, InLoopConsumerThread), type(thread)
    return thread
