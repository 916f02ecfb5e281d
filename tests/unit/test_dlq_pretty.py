"""`pipeline dlq inspect` in text: a dead letter of 1 MiB (a `too_large` one) shows its first 4,096
characters and its size, not a megabyte on the terminal; --json (the codec) keeps every byte."""

from __future__ import annotations

from pipeline.dlq import codec
from pipeline.dlq.inspect import SHOWN_CHARS, pretty
from pipeline.dlq.records import DeadLetter


def test_a_large_value_is_cut_in_text_and_whole_in_json() -> None:
    value = b"x" * (1 << 20)
    record = DeadLetter("in.dlq", 0, 7, 1_764_000_000_000, b"k", value, (("pipeline.error.reason", b"too_large"),))
    text = pretty(record)
    assert len(text) < 2 * SHOWN_CHARS
    assert "... (1,048,576 bytes in all; --json shows every byte)" in text
    assert "pipeline.error.reason: too_large" in text
    assert len(codec.encode(record)) > 1 << 20
    small = DeadLetter("in.dlq", 0, 8, 1_764_000_000_000, b"k", b'{"a":1}', ())
    assert pretty(small).endswith('value: {"a":1}')
