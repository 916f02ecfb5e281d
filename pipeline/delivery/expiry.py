"""Events the store-and-forward queue dropped: a sink or retry topic whose retention (`QUEUE_MAX_BYTES`,
`retention.ms`) deleted events before they were delivered, e.g. during an outage longer than the queue.

Kafka moves the consumer silently to the earliest offset left; the only trace is a jump in the offsets
read. Sink and retry topics are written only by the pipeline's own non-transactional producer, so their
offsets have no other gaps: a jump past the offset expected next is a count of deleted events.
"""

from __future__ import annotations

import structlog
from aiokafka import TopicPartition

from pipeline.observability import metrics

log = structlog.get_logger("pipeline.deliver")


class ExpiryWatch:
    def __init__(self, sink: str) -> None:
        self.sink = sink
        self.expected: dict[TopicPartition, int] = {}  # partition -> offset it should deliver next
        self.expired = 0

    def moved(self, tp: TopicPartition, offset: int | None) -> None:
        """The consumer's position was set (assignment at the committed offset, a seek)."""
        if offset is None:
            self.expected.pop(tp, None)
        else:
            self.expected[tp] = offset

    def read(self, tp: TopicPartition, first: int, last: int) -> None:
        """Records `first`..`last` of `tp` were fetched."""
        expected = self.expected.get(tp)
        if expected is not None and first > expected:
            deleted = first - expected
            self.expired += deleted
            metrics.SINK_EXPIRED.labels(self.sink).inc(deleted)
            log.error(
                "events deleted by the topic's retention before delivery; size QUEUE_MAX_BYTES for longer outages",
                sink=self.sink,
                topic=tp.topic,
                partition=tp.partition,
                deleted=deleted,
                first_offset_left=first,
            )
        self.expected[tp] = last + 1
