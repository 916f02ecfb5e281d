"""Which partitions of a sink's consumer must not be fetched now, and until when (after quixstreams'
pausing manager). Three reasons, each with a resume-at time:

- a retry-tier partition whose head event is not due yet (`hold`);
- the whole sink, while its breaker admits no request (`set_gate`);
- the whole sink for a while (`pause_sink`): a retry tier or the DLQ cannot be written (growing
  backoff), or a rate limit's debt is being paid. The loop keeps polling meanwhile, so the worker stays
  in its group however long the pause.

`apply` makes the consumer's paused set match, so a pause or resume that failed is redone next round.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka import TopicPartition

from pipeline.delivery.consumer import DeliveryConsumer


class Pausing:
    def __init__(self) -> None:
        self.holds: dict[TopicPartition, float] = {}  # retry-tier partition -> resume at (epoch seconds)
        self.gate_closed = False
        self.sink_until = 0.0
        self.sink_reason: str | None = None

    def hold(self, tp: TopicPartition, until: float) -> None:
        self.holds[tp] = until

    def set_gate(self, closed: bool) -> bool:
        """Close (breaker admits nothing) or open the gate; True when that changed it."""
        changed = closed != self.gate_closed
        self.gate_closed = closed
        return changed

    def pause_sink(self, until: float, reason: str) -> None:
        if until > self.sink_until:
            self.sink_until = until
            self.sink_reason = reason

    def sink_paused(self, now: float) -> bool:
        return self.gate_closed or now < self.sink_until

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self.holds.pop(tp, None)

    def wanted(self, assigned: set[TopicPartition], now: float) -> set[TopicPartition]:
        """The partitions that should be paused now (due and unassigned holds are dropped)."""
        for tp, until in list(self.holds.items()):
            if tp not in assigned or until <= now:
                del self.holds[tp]
        return set(assigned) if self.sink_paused(now) else set(self.holds)

    def apply(self, consumer: DeliveryConsumer, now: float) -> None:
        assigned = consumer.assignment()
        want = self.wanted(assigned, now)
        paused = consumer.paused()
        pause = want - paused
        resume = (paused & assigned) - want
        if pause:
            consumer.pause(*pause)
        if resume:
            consumer.resume(*resume)

    def idle_timeout(self, now: float, cap: float) -> float:
        """How long a poll may wait before a hold or the sink pause ends."""
        ends = [*self.holds.values(), *([self.sink_until] if self.sink_until > now else [])]
        if not ends:
            return cap
        return max(0.0, min(cap, min(ends) - now))
