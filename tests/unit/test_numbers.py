"""Exact numbers: the canonical spelling, and what it means for the content hash."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.events import Rejection, canonical_json, canonical_number, parse_event

BASE = '{{"timestamp": "2026-11-22T10:00:00Z", "source": "s", "type": "t", "payload": {payload}}}'


def parsed(payload: str) -> tuple[str, bytes]:
    accepted = parse_event(BASE.format(payload=payload).encode(), 1_000_000)
    return accepted.event_hash, accepted.body


@pytest.mark.parametrize(
    ("literal", "canonical"),
    [
        ("1", "1"),
        ("1.0", "1"),
        ("1.00", "1"),
        ("1e0", "1"),
        ("10E-1", "1"),
        ("100e-2", "1"),
        ("-0", "0"),
        ("-0.0", "0"),
        ("0e99", "0"),
        ("1e9", "1000000000"),
        ("1.50", "1.5"),
        ("-81.5", "-81.5"),
        ("2.5e-3", "0.0025"),
        ("12.34e1", "123.4"),
        ("1E+2", "100"),
        ("1e20", "100000000000000000000"),
        ("1e21", "1e+21"),
        ("123e30", "1.23e+32"),
        ("1e-6", "0.000001"),
        ("1e-7", "1e-7"),
        ("0.00000012", "1.2e-7"),
        ("5e-324", "5e-324"),
        ("1.7976931348623157e308", "1.7976931348623157e+308"),
        ("123456789012345678901234567890.5", "123456789012345678901234567890.5"),
    ],
)
def test_canonical_spelling(literal: str, canonical: str) -> None:
    assert canonical_number(literal) == canonical


literals = st.builds(
    lambda sign, whole, fraction, exponent: f"{sign}{whole}{fraction}{exponent}",
    st.sampled_from(["", "-"]),
    st.one_of(st.just("0"), st.integers(1, 10**30).map(str)),
    st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=30).map(lambda d: "." + d)),
    st.one_of(
        st.just(""),
        st.builds(
            lambda e, s, n: f"{e}{s}{n}", st.sampled_from("eE"), st.sampled_from(["", "+", "-"]), st.integers(0, 400)
        ),
    ),
)


@given(literals)
def test_the_canonical_spelling_is_the_exact_value_and_stable(literal: str) -> None:
    canonical = canonical_number(literal)
    assert Decimal(canonical) == Decimal(literal)
    assert canonical_number(canonical) == canonical
    assert json.loads(canonical, parse_float=Decimal) == Decimal(literal)
    assert len(canonical) <= len(literal.lstrip("-")) + 21


@pytest.mark.parametrize(
    "spellings",
    [
        ["1", "1.0", "1.00", "1e0", "10E-1", "0.1e1"],
        ["0", "-0", "0.0", "-0.0", "0e10"],
        ["1000000000", "1e9", "1E+9", "1000000000.000"],
        ["1e21", "1000000000000000000000", "10e20"],
        ["0.1", "1e-1", "0.10"],
    ],
)
def test_spellings_of_one_number_are_one_event(spellings: list[str]) -> None:
    assert len({parsed(s) for s in spellings}) == 1


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("0.1", "0.10000000000000000001"),  # the same float
        ("1.0000000000000002", "1.0000000000000003"),
        (str(2**64 + 1), str(2**64 + 2)),  # beyond 64 bits
        (str(2**53 + 1), str(2**53)),  # beyond a double's integers
        ("123456789012345678901234567890123", "123456789012345678901234567890124"),
        ("1e400", "1.0000000000000000000001e400"),  # beyond a double's range
    ],
)
def test_numbers_that_differ_only_past_float_precision_are_different_events(a: str, b: str) -> None:
    (hash_a, body_a), (hash_b, body_b) = parsed(a), parsed(b)
    assert hash_a != hash_b
    assert canonical_number(a).encode() in body_a and canonical_number(b).encode() in body_b


def test_numbers_are_stored_as_sent() -> None:
    big = "1234567890123456789012345678901234567890.000000000000000000000001"
    _, body = parsed(f'{{"a": {big}, "b": {2**100}, "c": -0.000001}}')
    assert body.startswith(b'{"labels":{},"payload":{"a":' + big.encode() + b',"b":' + str(2**100).encode())
    assert b'"c":-0.000001}' in body


def test_integers_beyond_pythons_conversion_limit_stay_exact() -> None:
    digits = "7" * 5000
    _, body = parsed(digits)
    assert b'"payload":' + digits.encode() + b"," in body
    _, round_number = parsed("1" + "0" * 5000)
    assert b'"payload":1e+5000,' in round_number


def test_an_exponent_no_sink_can_hold_is_rejected() -> None:
    with pytest.raises(Rejection) as err:
        parsed("1e10000000000")
    assert err.value.reason == "schema" and "exponent" in err.value.message


def test_canonical_json_of_python_values_uses_the_same_spelling() -> None:
    value = {"b": [1.0, 0.1, Decimal("1.50"), 2**70, 10**25, True, None], "a": 1e21}
    assert canonical_json(value) == b'{"a":1e+21,"b":[1,0.1,1.5,1180591620717411303424,1e+25,true,null]}'
    for bad in (float("nan"), float("inf"), Decimal("NaN")):
        with pytest.raises(ValueError):
            canonical_json({"x": bad})
