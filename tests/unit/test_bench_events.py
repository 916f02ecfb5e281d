"""The benchmark's backlog: sizes, the duplicate share, and duplicates that differ in bytes only."""

from __future__ import annotations

import random
from collections import Counter

import orjson
import pytest

from bench.events import EVENT_BYTES, LiveMix, compact, event, make_backlog, respell, script, split
from pipeline.events import parse_event


def test_split_gives_the_duplicate_share_and_keeps_one_unique_event() -> None:
    assert split(200_000, 0.3) == (140_000, 60_000)
    assert split(10, 0.0) == (10, 0)
    assert split(2, 0.9) == (1, 1)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError):
            split(10, bad)
    with pytest.raises(ValueError):
        split(0, 0.3)


def test_an_event_is_about_260_bytes_and_valid_for_the_pipeline() -> None:
    for n in (0, 7, 123_456, 20_000_000):
        raw = compact(event(n))
        assert EVENT_BYTES - 10 <= len(raw) <= EVENT_BYTES + 10
        parse_event(raw, 1 << 20)
    assert len({compact(event(n)) for n in range(1000)}) == 1000


def test_a_respelled_event_differs_in_bytes_and_key_order_but_not_in_content_or_hash() -> None:
    rng = random.Random(3)
    for n in range(200):
        body = event(n)
        raw = respell(body, rng)
        assert raw != compact(body)
        assert list(orjson.loads(raw)) != list(body)
        assert orjson.loads(raw) == body
        assert parse_event(raw, 1 << 20).event_hash == parse_event(compact(body), 1 << 20).event_hash


def test_the_backlog_holds_the_unique_events_and_the_share_of_respelled_duplicates() -> None:
    backlog = make_backlog(2000, 0.3, partitions=6)
    assert (backlog.events, backlog.unique, backlog.duplicates) == (2000, 1400, 600)
    hashes = Counter(parse_event(m.value, 1 << 20).event_hash for m in backlog.messages)
    assert len(hashes) == 1400
    assert sum(hashes.values()) - len(hashes) == 600
    assert len({m.value for m in backlog.messages}) == 2000  # no duplicate is a byte-for-byte copy
    per_partition = Counter(m.partition for m in backlog.messages)
    assert sorted(per_partition) == list(range(6)) and max(per_partition.values()) - min(per_partition.values()) <= 1
    assert all(m.key == orjson.loads(m.value)["source"].encode() for m in backlog.messages)


def test_the_backlog_is_deterministic_and_the_latency_event_carries_its_publish_time() -> None:
    assert make_backlog(300, 0.3, 4) == make_backlog(300, 0.3, 4)
    assert make_backlog(300, 0.3, 4, seed=1) != make_backlog(300, 0.3, 4, seed=2)
    assert orjson.loads(compact(event(5, sent_at_ms=1700000000250)))["payload"]["sent_at_ms"] == 1700000000250


def test_the_live_mix_has_the_backlogs_duplicate_share_of_recent_events_respelled() -> None:
    mix = LiveMix(0.3, first=1000, recent=50)
    sent = [mix.next(sent_at_ms=1_700_000_000_000 + n) for n in range(1000)]
    new = [body for body, _, unique in sent if unique]
    assert len(new) == mix.unique == 700 and mix.sent == 1000
    assert [b["payload"]["seq"] for b in new] == list(range(1000, 1700))
    assert all(value == compact(body) for body, value, unique in sent if unique)
    hashes = [parse_event(value, 1 << 20).event_hash for _, value, _ in sent]
    first_seen = {}
    for i, ((body, value, unique), digest) in enumerate(zip(sent, hashes, strict=True)):
        if unique:
            assert digest not in first_seen
            first_seen[digest] = i
        else:  # a respelled copy of one of the 50 unique events sent last, with the same publish time
            assert value != compact(body) and digest in first_seen
            assert sum(1 for j in first_seen.values() if j > first_seen[digest]) < 50
    # evenly spread: every run of 10 messages after the first holds exactly 3 duplicates
    assert all(sum(not u for _, _, u in sent[k : k + 10]) == 3 for k in range(10, 1000, 10))
    assert mix.stamped == 700  # every unique event carried a publish time
    warm = LiveMix(0.3, first=0)
    for n in range(100):
        warm.next(sent_at_ms=None if n < 40 else 1_700_000_000_000 + n)
    assert (warm.unique, warm.stamped) == (70, 42)  # the unique ones of the 60 stamped messages
    with pytest.raises(ValueError):
        LiveMix(1.0, first=0)


def test_a_scripted_mix_sends_what_the_live_mix_would_with_the_publish_times_of_its_sends() -> None:
    prepared = script(LiveMix(0.3, first=1000, recent=50), 1000, measured_from=200)
    reference = LiveMix(0.3, first=1000, recent=50)
    stamps = {-1: b""}
    for i, message in enumerate(prepared):
        now = 1_700_000_000_000 + i
        if message.new:
            stamps[message.origin] = b"%d" % now
        value = message.value(stamps[message.origin])
        body, expected, new = reference.next(now if i >= 200 else None)
        # byte for byte what the live mix makes when each unique event is stamped at its own send; a
        # duplicate carries its original's time, so its content hash is the original's
        carries = "sent_at_ms" in body["payload"]
        assert (value, message.new, message.key) == (expected, new and carries, str(body["source"]).encode())
        assert (message.origin >= 0) == carries and (not carries or message.origin == body["payload"]["seq"])
        assert i >= 200 or message.origin < 0  # the warm-up carries no publish time
    assert reference.stamped == sum(m.new for m in prepared) == 560
