"""What may be committed, and where to rewind: the one rule delivery commits by.

An offset is done once its event is written to the sink, in a retry tier or in the DLQ. A partition's
commit is the first offset of the round that is not done (or the offset after the round's last one);
everything fetched from there on is rewound. Offsets done above the commit are remembered, so that on
the next round they are neither written again nor produced again (an unwritable DLQ must not make every
good event of the batch reach the sink again). A failed write whose retry tier or DLQ produce failed is
remembered with its error, so the next round only routes it. The memory of a partition goes when it is
committed past or revoked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from aiokafka import TopicPartition

from pipeline.delivery.items import Item
from pipeline.sinks.base import SinkError


class OffsetBook:
    def __init__(self) -> None:
        self._done: dict[TopicPartition, set[int]] = {}
        self._unrouted: dict[TopicPartition, dict[int, SinkError]] = {}
        self._committed: dict[TopicPartition, int] = {}  # the last offset this book saw committed

    def is_done(self, item: Item) -> bool:
        return item.offset in self._done.get(item.tp, ())

    def unrouted(self, item: Item) -> SinkError | None:
        """The error of an earlier write of this item whose routing failed."""
        return self._unrouted.get(item.tp, {}).get(item.offset)

    def mark_done(self, items: Iterable[Item]) -> None:
        for item in items:
            self._done.setdefault(item.tp, set()).add(item.offset)
            self._unrouted.get(item.tp, {}).pop(item.offset, None)

    def mark_unrouted(self, item: Item, error: SinkError) -> None:
        self._unrouted.setdefault(item.tp, {})[item.offset] = error

    def _first_pending(self, items: Sequence[Item]) -> dict[TopicPartition, tuple[int, int | None]]:
        """tp -> (offset after the round's last, first offset not done or None)."""
        out: dict[TopicPartition, tuple[int, int | None]] = {}
        for item in sorted(items, key=lambda i: (i.tp.topic, i.tp.partition, i.offset)):
            end, pending = out.get(item.tp, (0, None))
            if pending is None and not self.is_done(item):
                pending = item.offset
            out[item.tp] = (max(end, item.offset + 1), pending)
        return out

    def commits(self, items: Sequence[Item]) -> dict[TopicPartition, int]:
        """The offset to commit per partition of the round (only where the round moved it)."""
        first = {tp: min(i.offset for i in items if i.tp == tp) for tp in {i.tp for i in items}}
        out: dict[TopicPartition, int] = {}
        for tp, (end, pending) in self._first_pending(items).items():
            commit = end if pending is None else pending
            if commit > first[tp]:
                out[tp] = commit
        return out

    def rewinds(self, items: Sequence[Item]) -> dict[TopicPartition, int]:
        """Where each partition of the round must be read again from (its first offset not done)."""
        return {tp: pending for tp, (_, pending) in self._first_pending(items).items() if pending is not None}

    def everything(self, items: Sequence[Item]) -> dict[TopicPartition, int]:
        """Where to read the whole round again (a failed commit, an unforeseen error): per partition its
        first offset, or the offset committed since if that is later. What is done is skipped when read
        again, and then committed; what was committed is not read again."""
        out: dict[TopicPartition, int] = {}
        for item in items:
            out[item.tp] = min(out.get(item.tp, item.offset), item.offset)
        return {tp: max(offset, self._committed.get(tp, offset)) for tp, offset in out.items()}

    def committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            self._committed[tp] = offset
            done = self._done.get(tp)
            if done:
                self._done[tp] = {o for o in done if o >= offset}
            unrouted = self._unrouted.get(tp)
            if unrouted:
                self._unrouted[tp] = {o: e for o, e in unrouted.items() if o >= offset}

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self._done.pop(tp, None)
            self._unrouted.pop(tp, None)
            self._committed.pop(tp, None)

    def remembered(self) -> int:
        return sum(len(v) for v in self._done.values()) + sum(len(v) for v in self._unrouted.values())
