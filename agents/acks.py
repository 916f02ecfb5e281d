"""Manual acknowledgement: an event's offset may be committed only once what it caused is durable."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any, cast

from faust.types import EventT, StreamT

from pipeline.batching import Batcher


def manual_acks(stream: StreamT[Any]) -> StreamT[Any]:
    """The same stream with automatic acks off: we ack each event once what it caused is durable."""
    noack: StreamT[Any] = cast(Any, stream).noack()
    return noack


async def ack_all(stream: StreamT[Any], events: Sequence[EventT[Any]]) -> None:
    for event in events:
        await stream.ack(event)


async def wait_produced(futures: Sequence[Awaitable[Any]]) -> None:
    """Wait for produce acknowledgements (acks=all); raises if any produce failed."""
    if futures:
        await asyncio.gather(*futures)


Pending = tuple[EventT[Any], list[Awaitable[Any]]]


def produced_then_acked(stream: StreamT[Any], *, max_size: int, name: str) -> Batcher[Pending]:
    """A batcher of (event, produce futures): each batch waits for its produce acknowledgements, then
    acks its events, so an offset is committed only once what the event caused is durable in Kafka."""

    async def settle(batch: list[Pending]) -> None:
        await wait_produced([f for _, futures in batch for f in futures])
        await ack_all(stream, [event for event, _ in batch])

    return Batcher(settle, max_size=max_size, linger=0.05, name=name)
