"""bench.hops: the three hops of each row add up to its end-to-end latency, and a row whose records are
missing from either topic is left out."""

from __future__ import annotations

import pytest

from bench.hops import hops_of


def test_hops_split_each_rows_latency_at_its_records_timestamps() -> None:
    rows = [
        {"event_hash": "a", "sent": 100.000, "row": 100.100},
        {"event_hash": "b", "sent": 200.000, "row": 200.300},
        {"event_hash": "lost", "sent": 300.000, "row": 300.500},  # no sink-topic record: left out
    ]
    by_hash = {b"a": 100_010, b"b": 200_050, b"lost": 300_010}
    sink = {b"a": 100_030, b"b": 200_150}
    hops = hops_of(rows, by_hash, sink)
    assert hops["ingest"]["max"] == pytest.approx(50.0)
    assert hops["dedupe"]["max"] == pytest.approx(100.0)
    assert hops["delivery"]["max"] == pytest.approx(150.0)
    assert hops["ingest"]["p50"] == pytest.approx(10.0)
    assert hops["dedupe"]["p50"] == pytest.approx(20.0)
    assert hops["delivery"]["p50"] == pytest.approx(70.0)


def test_no_rows_with_both_records_gives_no_hops() -> None:
    assert hops_of([{"event_hash": "a", "sent": 1.0, "row": 2.0}], {}, {}) == {}
