"""Manual acknowledgement: an event's offset may be committed only once what it caused is durable."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

from faust.types import EventT, StreamT


async def ack_all(stream: StreamT[Any], events: Sequence[EventT[Any]]) -> None:
    for event in events:
        await stream.ack(event)


async def wait_produced(futures: Sequence[Awaitable[Any]]) -> None:
    """Wait for produce acknowledgements (acks=all); raises if any produce failed."""
    if futures:
        await asyncio.gather(*futures)
