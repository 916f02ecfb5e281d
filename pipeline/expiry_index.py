"""Which dedupe entries are due to expire, without scanning the table.

Entries are filed by the time bucket of their first sighting (`bucket_ms` wide). Once a bucket's newest
possible entry is older than the window, every key in it is due: a sweep costs what expires, not what is
kept. Event hashes (64 hex digits) are kept packed as 32 bytes, so a million of them take 32 MB; other
keys are kept as text. A key written again (an event forwarded again after it expired) is filed again;
the sweep checks each due key against the table before it removes it, so a stale filing does no harm.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

HASH_BYTES = 32


@dataclass
class _Bucket:
    packed: bytearray = field(default_factory=bytearray)
    other: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.packed) // HASH_BYTES + len(self.other)

    def keys(self) -> Iterator[str]:
        packed = self.packed
        for start in range(0, len(packed), HASH_BYTES):
            yield packed[start : start + HASH_BYTES].hex()
        yield from self.other


class ExpiryIndex:
    def __init__(self, bucket_ms: int) -> None:
        if bucket_ms < 1:
            raise ValueError("bucket_ms must be >= 1")
        self.bucket_ms = bucket_ms
        self._buckets: dict[int, _Bucket] = {}

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())

    def clear(self) -> None:
        self._buckets.clear()

    def add(self, key: str, first_seen_ms: int) -> None:
        bucket = self._buckets.get(first_seen_ms // self.bucket_ms)
        if bucket is None:
            bucket = self._buckets[first_seen_ms // self.bucket_ms] = _Bucket()
        if len(key) == 2 * HASH_BYTES:
            try:
                bucket.packed += bytes.fromhex(key)
                if bucket.packed[-HASH_BYTES:].hex() == key:  # lower-case hex: packs and unpacks exactly
                    return
                del bucket.packed[-HASH_BYTES:]
            except ValueError:
                pass
        bucket.other.append(key)

    def pop_due(self, *, now_ms: int, window_ms: int) -> list[str]:
        """The keys of every bucket whose entries are all expired (now - first seen >= window), removed from
        the index."""
        due = [b for b in self._buckets if (b + 1) * self.bucket_ms - 1 <= now_ms - window_ms]
        keys: list[str] = []
        for b in sorted(due):
            keys.extend(self._buckets.pop(b).keys())
        return keys
