"""What may be committed, and where to rewind: the one rule delivery commits by.

An offset is done once its event is written to the sink, in a retry tier or in the DLQ. A partition's
commit is the first offset of the round that is not done (or the offset after the round's last one);
everything fetched from there on is rewound. Offsets done above the commit are remembered, so that on
the next round they are neither written again nor produced again (an unwritable DLQ must not make every
good event of the batch reach the sink again). A failed write whose retry tier or DLQ produce failed is
remembered with its error, so the next round only routes it. A commit that was sent and failed is owed: it
goes out again with the next. The memory of a partition goes when it is committed past or revoked.
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
        self._owed: dict[TopicPartition, int] = {}  # commits sent that failed: they go out with the next

    def is_done(self, item: Item) -> bool:
        return item.offset in self._done.get(item.tp, ())

    def unrouted(self, item: Item) -> SinkError | None:
        """The error of an earlier write of this item whose routing failed."""
        return self._unrouted.get(item.tp, {}).get(item.offset)

    def mark_done(self, items: Iterable[Item]) -> None:
        done = self._done
        unrouted = self._unrouted
        for item in items:
            tp, offset = item.tp, item.record.offset
            marked = done.get(tp)
            if marked is None:
                marked = done[tp] = set()
            marked.add(offset)
            failed = unrouted.get(tp)
            if failed:
                failed.pop(offset, None)

    def mark_unrouted(self, item: Item, error: SinkError) -> None:
        self._unrouted.setdefault(item.tp, {})[item.offset] = error

    def _spans(self, items: Sequence[Item]) -> tuple[dict[TopicPartition, int], ...]:
        """Per partition of the round: its first offset, the offset after its last, and its first offset not
        done (only where one is not done). One pass, no sort: the first not done is the least not done."""
        first: dict[TopicPartition, int] = {}
        end: dict[TopicPartition, int] = {}
        pending: dict[TopicPartition, int] = {}
        done = self._done
        for item in items:
            tp, offset = item.tp, item.record.offset
            least = first.get(tp)
            if least is None:
                first[tp], end[tp] = offset, offset + 1
            else:
                if offset < least:
                    first[tp] = offset
                if offset >= end[tp]:
                    end[tp] = offset + 1
            marked = done.get(tp)
            if marked is None or offset not in marked:
                earliest = pending.get(tp)
                if earliest is None or offset < earliest:
                    pending[tp] = offset
        return first, end, pending

    def plan(self, items: Sequence[Item]) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        """The round's commits (per partition, only where the round moved it past the last commit this book
        saw: a round read again from below it never commits backwards) and rewinds (where each partition
        must be read again from: its first offset not done)."""
        first, end, pending = self._spans(items)
        commits: dict[TopicPartition, int] = {}
        committed = self._committed
        for tp, least in first.items():
            commit = pending.get(tp, end[tp])
            if commit > least and commit > committed.get(tp, -1):
                commits[tp] = commit
        return commits, pending

    def everything(self, items: Sequence[Item]) -> dict[TopicPartition, int]:
        """Where to read the whole round again (a failed commit, an unforeseen error): per partition its
        first offset, or the offset committed since if that is later. What is done is skipped when read
        again, and then committed; what was committed is not read again."""
        out: dict[TopicPartition, int] = {}
        for item in items:
            out[item.tp] = min(out.get(item.tp, item.offset), item.offset)
        return {tp: max(offset, self._committed.get(tp, offset)) for tp, offset in out.items()}

    def failed(self, offsets: Mapping[TopicPartition, int]) -> None:
        """A commit of `offsets` failed: owe it (a later owed offset of a partition stays)."""
        for tp, offset in offsets.items():
            self._owed[tp] = max(offset, self._owed.get(tp, offset))

    def owed(self) -> dict[TopicPartition, int]:
        return dict(self._owed)

    def committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            self._committed[tp] = offset
            if self._owed.get(tp, offset) <= offset:
                self._owed.pop(tp, None)
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
            self._owed.pop(tp, None)

    def remembered(self) -> int:
        return sum(len(v) for v in self._done.values()) + sum(len(v) for v in self._unrouted.values())
