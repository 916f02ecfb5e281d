"""The commit rule for the Faust agents: an offset is committed only when every offset below it, from the
last commit on, was acked by an agent (or proven by the broker not to hold a record).

Faust's own rule differs in two ways that lose events (seen after SIGKILL restarts, under load):
- it treats offsets its fetch loop skipped as "gaps" and commits past them, although those records
  were never handed to an agent (its fetch loop drops records during rebalances and flow changes);
- it commits past the offset at the head when only that one is missing (`min(acked) - committed > 1`)
  and does not check the head at all when the committed offset is unknown or 0.

Here a missing offset stops the commit. The commit watchdog (agents/watchdog.py) then asks the broker
whether a record exists at that offset: if it does, the partition is read again from there; if not
(a transaction marker or a compacted record), the offsets are acked as empty.
"""

from __future__ import annotations

from bisect import bisect_left


def committable(acked: list[int], committed: int | None) -> tuple[int | None, int]:
    """(offset to commit, count of acks it consumes) for a sorted list of acked offsets.

    `committed` is the next offset to read (Kafka's committed offset). Acks below it are stale (events
    read twice) and are consumed without moving the commit. Returns (None, n) when the offset at
    `committed` is not acked yet or `committed` is unknown.
    """
    if committed is None:
        return None, 0
    stale = bisect_left(acked, committed)
    nxt = committed
    i = stale
    while i < len(acked) and acked[i] <= nxt:
        if acked[i] == nxt:
            nxt += 1
        i += 1
    return (nxt if nxt > committed else None), i
