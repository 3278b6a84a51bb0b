"""SPLUNK_HEC_CONCURRENCY: the setting, the adaptive limit (AIMD) on a fake clock, and what
feeds it."""

from __future__ import annotations

import pytest
import structlog
from structlog.testing import capture_logs

from config.errors import ConfigError
from forwarder.delivery.concurrency import AdaptiveLimit, AimdPolicy
from forwarder.delivery.sending import load_signal
from forwarder.errors import RequestCancelledError, RetryableError
from forwarder.hec.client import SendResult
from forwarder.hec.protocol import classify
from tests.conftest import make_settings

LOG = structlog.get_logger("tests")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def limiter(**policy: float) -> tuple[AdaptiveLimit, Clock]:
    clock = Clock()
    return AdaptiveLimit(AimdPolicy(**policy), clock=clock, log=LOG), clock  # type: ignore[arg-type]


def window(limit: AdaptiveLimit, clock: Clock, rtt: float, *, saturated: bool = True) -> None:
    """One window of answers that each took ``rtt``; the last one ends the window."""
    if saturated:
        limit.saturated()
    for _ in range(3):
        limit.observe("ok", rtt)
    clock.now += max(rtt, limit.policy.min_window_s) + 0.001
    limit.observe("ok", rtt)


# ---------------------------------------------------------------------------- the setting


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", 1), ("4", 4), (" 16 ", 16), ("adaptive", "adaptive"), ("ADAPTIVE", "adaptive")],
)
def test_the_setting_takes_a_number_or_adaptive(raw: str, expected: object) -> None:
    settings = make_settings(SPLUNK_HEC_URL="http://127.0.0.1:8088", SPLUNK_HEC_CONCURRENCY=raw)
    assert settings.hec.concurrency == expected


def test_the_setting_defaults_to_one_request_at_a_time() -> None:
    assert make_settings(SPLUNK_HEC_URL="http://127.0.0.1:8088").hec.concurrency == 1


@pytest.mark.parametrize("raw", ["0", "-2", "1.5", "many", "257", "4 adaptive"])
def test_anything_else_is_refused_naming_the_key(raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_settings(SPLUNK_HEC_URL="http://127.0.0.1:8088", SPLUNK_HEC_CONCURRENCY=raw)
    assert caught.value.key == "SPLUNK_HEC_CONCURRENCY"
    assert "adaptive" in caught.value.problem


def test_the_toml_key_mirrors_the_variable(tmp_path: object) -> None:
    from pathlib import Path

    from config.loader import load_settings

    path = Path(str(tmp_path)) / "forwarder.toml"
    path.write_text('splunk_hec_url = "http://127.0.0.1:8088"\nsplunk_hec_concurrency = 8\n')
    assert load_settings({}, path).hec.concurrency == 8
    path.write_text(
        'splunk_hec_url = "http://127.0.0.1:8088"\nsplunk_hec_concurrency = "adaptive"\n'
    )
    assert load_settings({}, path).hec.concurrency == "adaptive"


# ---------------------------------------------------------------------------- the limit


def test_the_limit_grows_by_one_per_window_while_latency_holds() -> None:
    limit, clock = limiter(ceiling=4)
    assert limit.limit == 1
    seen = []
    for _ in range(6):
        window(limit, clock, 0.02)
        seen.append(limit.limit)
    assert seen == [2, 3, 4, 4, 4, 4]  # additive, and never past the ceiling


def test_without_saturation_the_limit_stays() -> None:
    """More room is only useful when the deliverer had a request waiting for it."""
    limit, clock = limiter()
    for _ in range(5):
        window(limit, clock, 0.02, saturated=False)
    assert limit.limit == 1


def test_pushback_halves_the_limit_at_least_to_one() -> None:
    limit, clock = limiter(ceiling=16)
    for _ in range(9):
        window(limit, clock, 0.02)
    assert limit.limit == 10
    with capture_logs() as logs:
        limit.saturated()
        limit.observe("overload")
        clock.now += 1
        limit.observe("ok", 0.02)
    assert limit.limit == 5
    assert [(e["event"], e["limit"], e["previous"], e["reason"]) for e in logs] == [
        ("concurrency_limit_changed", 5, 10, "pushback")
    ]
    for _ in range(5):
        limit.observe("overload")
        clock.now += 1
        limit.observe("overload")
    assert limit.limit == 1


def test_rising_latency_decreases_the_limit() -> None:
    limit, clock = limiter(ceiling=16)
    for _ in range(7):
        window(limit, clock, 0.02)
    assert limit.limit == 8
    with capture_logs() as logs:
        window(limit, clock, 0.2)  # ten times the baseline: requests queue at the server
    assert limit.limit == 4
    assert logs[-1]["reason"] == "latency_rising"


def test_noise_within_the_tolerance_is_not_a_rise() -> None:
    limit, clock = limiter(ceiling=16, min_rise=0.25)
    for _ in range(3):
        window(limit, clock, 0.020)
    assert limit.limit == 4
    window(limit, clock, 0.024)  # +20 %: below min_rise
    assert limit.limit == 5


def test_answers_that_say_nothing_about_load_change_nothing() -> None:
    limit, clock = limiter()
    for _ in range(4):
        limit.saturated()
        limit.observe("ignore")
        clock.now += 1
        limit.observe("ignore")
    assert limit.limit == 1 and limit.baseline_s is None


def test_windows_are_one_smoothed_round_trip_long() -> None:
    """Answers within one round trip of the window's start do not end it."""
    limit, clock = limiter(ceiling=8)
    window(limit, clock, 0.5)
    assert limit.limit == 2 and limit.baseline_s == pytest.approx(0.5)
    limit.saturated()
    clock.now += 0.2
    limit.observe("ok", 0.5)
    assert limit.limit == 2  # 0.2 s into a 0.5 s window
    clock.now += 0.4
    limit.observe("ok", 0.5)
    assert limit.limit == 3


@pytest.mark.parametrize(
    "policy",
    [{"initial": 0}, {"initial": 5, "ceiling": 4}, {"decrease_ratio": 1.0}, {"ewma_alpha": 0.0}],
)
def test_a_policy_out_of_range_is_refused(policy: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        AimdPolicy(**policy)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- its input


def answered(status: int, body: str) -> SendResult:
    return SendResult(classify(status, body), status, None, 10)


@pytest.mark.parametrize(
    ("landed", "signal"),
    [
        (answered(200, '{"text":"Success","code":0,"ackId":1}'), "ok"),
        (answered(503, '{"text":"Server is busy","code":9}'), "overload"),
        (answered(503, '{"text":"HEC is unhealthy, queues are full","code":18}'), "overload"),
        (answered(429, "too many requests"), "overload"),
        (answered(504, "gateway timeout"), "overload"),
        (answered(500, '{"text":"Internal server error","code":8}'), "ignore"),
        (answered(413, "too large"), "ignore"),
        (
            answered(400, '{"text":"Invalid data format","code":6,"invalid-event-number":0}'),
            "ignore",
        ),
        (RetryableError("timed out", error_code="Splunk.ConnectionTimeout"), "overload"),
        (RequestCancelledError("cancelled", maybe_delivered=True), "ignore"),
    ],
)
def test_what_an_answer_says_about_load(landed: SendResult | Exception, signal: str) -> None:
    assert load_signal(landed) == signal
