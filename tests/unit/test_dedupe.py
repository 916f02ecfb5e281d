from __future__ import annotations

from pipeline.dedupe import Decision, Seen, decide


def test_decisions() -> None:
    seen = Seen(first_seen_ms=1_000, partition=2, offset=40)
    assert decide(None, now_ms=5_000, window_ms=10_000, partition=2, offset=40) is Decision.FORWARD
    assert decide(seen, now_ms=5_000, window_ms=10_000, partition=2, offset=41) is Decision.DUPLICATE
    assert decide(seen, now_ms=5_000, window_ms=10_000, partition=1, offset=40) is Decision.DUPLICATE
    assert decide(seen, now_ms=5_000, window_ms=10_000, partition=2, offset=40) is Decision.REDELIVERY
    assert decide(seen, now_ms=11_000, window_ms=10_000, partition=3, offset=1) is Decision.FORWARD


def test_seen_round_trip_and_garbage() -> None:
    seen = Seen(1, 2, 3)
    assert Seen.from_json(seen.to_json()) == seen
    assert Seen.from_json(None) is None and Seen.from_json({"t": "x"}) is None
