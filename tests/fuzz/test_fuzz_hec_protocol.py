"""Fuzz the HEC answer parser and classifier (``forwarder.hec.protocol``).

Whatever a server (or a proxy in front of it) answers, ``parse_response``, ``classify``,
``classify_answer``, ``health_of`` and ``parse_retry_after`` return a value and never raise;
``parse_acks`` raises only ``ValueError`` (documented: "the body is not an ack answer").
Deep nesting included: a RecursionError here would escape the deliverer's handling.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forwarder.hec.protocol import (
    HecAnswer,
    Outcome,
    classify,
    classify_answer,
    health_of,
    parse_acks,
    parse_response,
    parse_retry_after,
)
from tests.fuzz.support import MiB, deep_documents, fuzzing, hostile_bytes, huge, json_values

ACTIONS = {"ok", "retry", "split", "fatal", "ack_unavailable", "isolate", "reject"}

hec_like_bodies = st.one_of(
    hostile_bytes(),
    st.fixed_dictionaries(
        {},
        optional={
            "text": json_values(max_leaves=3),
            "code": st.one_of(st.integers(-5, 30), json_values(max_leaves=2)),
            "ackId": st.one_of(st.integers(), json_values(max_leaves=2)),
            "invalid-event-number": st.one_of(st.integers(), json_values(max_leaves=2)),
        },
    ).map(lambda doc: json.dumps(doc).encode()),
    st.sampled_from(
        [b"<html><body>Maintenance</body></html>", b"OK", b"null", b"[]", b'"text"', b""]
    ),
)
bodies = st.one_of(hec_like_bodies, hec_like_bodies.map(lambda b: b.decode("utf-8", "replace")))
statuses = st.one_of(st.integers(100, 599), st.integers())
headers = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(["Retry-After", "retry-after", "Content-Type", "X-Other"]),
        st.one_of(st.text(max_size=40), st.integers(-(10**6), 10**6).map(str)),
    ),
)


def assert_outcome(outcome: Outcome) -> None:
    assert outcome.action in ACTIONS
    assert isinstance(outcome.reason, str)
    if outcome.retry_after is not None:
        assert outcome.retry_after >= 0


@fuzzing(quick=200)
@given(bodies)
def test_parse_response_never_raises(body: bytes | str) -> None:
    answer = parse_response(body)
    assert isinstance(answer, HecAnswer)
    assert answer.code is None or type(answer.code) is int


@fuzzing(quick=200)
@given(statuses, bodies, headers, st.sampled_from(["event", "raw"]))
def test_classify_never_raises(
    status: int, body: bytes | str, header_map: dict[str, str] | None, endpoint: Any
) -> None:
    outcome = classify(status, body, header_map, endpoint=endpoint, now=1_700_000_000.0)
    assert_outcome(outcome)
    assert_outcome(classify_answer(status, parse_response(body), header_map, endpoint=endpoint))


@fuzzing(quick=200)
@given(
    st.one_of(
        bodies,
        st.dictionaries(
            st.one_of(st.integers().map(str), st.text(max_size=8)), json_values(max_leaves=2)
        ).map(lambda acks: json.dumps({"acks": acks}).encode()),
    )
)
def test_parse_acks_raises_only_value_error(body: bytes | str) -> None:
    try:
        acks = parse_acks(body)
    except ValueError:
        return
    assert all(type(key) is int and type(value) is bool for key, value in acks.items())


@fuzzing(quick=200)
@given(
    st.one_of(
        st.none(),
        st.text(max_size=60),
        st.floats().map(str),
        st.integers().map(str),
        st.datetimes().map(lambda when: when.strftime("%a, %d %b %Y %H:%M:%S GMT")),
        st.sampled_from(["Fri, 31 Dec 9999 23:59:59 GMT", "Mon, 01 Jan 0001 00:00:00 GMT",
                         "1e400", "-1e400", "nan", "inf", "Wed, 99 Foo 2024 99:99:99 +9999"]),
    ),
    st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False, width=32)),
)  # fmt: skip
def test_parse_retry_after_returns_seconds_or_none(value: str | None, now: float | None) -> None:
    seconds = parse_retry_after(value, now=now)
    assert seconds is None or seconds >= 0


@fuzzing(quick=100)
@given(statuses, bodies)
def test_health_of_never_raises(status: int, body: bytes | str) -> None:
    healthy, _code, reason = health_of(status, body)
    assert isinstance(healthy, bool) and isinstance(reason, str)


@pytest.mark.parametrize("document", deep_documents(), ids=range(len(deep_documents())))
def test_deeply_nested_answers_are_classified(document: str) -> None:
    """100,000 nested brackets from a proxy: an outcome, not a RecursionError."""
    for body in (document, document.encode()):
        for status in (200, 400, 503):
            assert_outcome(classify(status, body, {"Retry-After": "1"}))
        assert isinstance(parse_response(body), HecAnswer)
        with contextlib.suppress(ValueError):
            parse_acks(body)


def test_a_huge_answer_is_classified() -> None:
    """An enormous body (a proxy streaming garbage): classified, never kept whole in the
    outcome (its text is truncated)."""
    size = huge(quick=16 * MiB, deep=128 * MiB)
    body = json.dumps({"text": "x" * size, "code": 9}).encode()
    outcome = classify(503, body)
    assert outcome.action == "retry" and len(outcome.reason) < 10_000
