"""Manual acknowledgement: an event's offset may be committed only once what it caused is durable."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any, cast

from faust.types import EventT, StreamT


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
