"""``[drain] failure_queue`` / ``DRAIN_FAILURE_QUEUE``: the push Lambda's on-failure queue."""

from __future__ import annotations

import pytest

from config.drain import load_drain_settings
from config.errors import ConfigError

URL = "https://sqs.us-east-1.amazonaws.com/123456789012/push-failures"


def test_unset_by_default() -> None:
    assert load_drain_settings(None, {}).failure_queue is None


def test_from_the_table_and_the_environment_which_wins() -> None:
    document = {"drain": {"failure_queue": URL}}
    assert load_drain_settings(document, {}).failure_queue == URL
    other = URL.replace("push-failures", "other")
    assert load_drain_settings(document, {"DRAIN_FAILURE_QUEUE": other}).failure_queue == other
    assert load_drain_settings(None, {"DRAIN_FAILURE_QUEUE": f"sqs://{URL}"}).failure_queue == URL


@pytest.mark.parametrize("value", ["push-failures", "s3://bucket/prefix", 3])
def test_not_a_queue_url_names_the_key(value: object) -> None:
    with pytest.raises(ConfigError, match=r"drain\.failure_queue"):
        load_drain_settings({"drain": {"failure_queue": value}}, {})
