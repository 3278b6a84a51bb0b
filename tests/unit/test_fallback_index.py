"""The fallback index: one event re-addressed exactly, and its setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.errors import ConfigError
from config.loader import load_settings, warnings_for
from forwarder.delivery.fallback import ORIG_INDEX_FIELD, reindex
from tests.conftest import make_settings
from transforms.hec_event import dumps
from transforms.records import WIRE_ERRORS, EncodedEvent


def encoded(obj: dict[str, object], event_id: str | None = "id-1") -> EncodedEvent:
    """As the transform writes it."""
    return EncodedEvent(dumps(obj).encode("utf-8", WIRE_ERRORS), event_id)


def test_only_index_and_orig_index_change() -> None:
    original = {
        "time": 1764000000.123,
        "host": "h",
        "source": "grp:stream",
        "sourcetype": "aws:cloudtrail",
        "index": "secops",
        "fields": {"event_id": "e1", "env": "prod"},
        "event": {"eventTime": "2025-01-01T00:00:00Z", "nested": [1, 2.5, None, "é ☃"]},
    }
    moved = reindex(encoded(original), "lastchance")
    assert moved is not None
    assert moved.event_id == "id-1"
    expected = dict(original)
    expected["index"] = "lastchance"
    expected["fields"] = {"event_id": "e1", "env": "prod", ORIG_INDEX_FIELD: "secops"}
    # Byte for byte what the transform would have written had the route named the fallback.
    assert moved.payload == encoded(expected).payload


def test_an_event_without_fields_gets_them() -> None:
    moved = reindex(encoded({"index": "a", "event": "line"}), "fb")
    assert moved is not None
    assert json.loads(moved.payload) == {
        "index": "fb",
        "event": "line",
        "fields": {"orig_index": "a"},
    }


def test_an_event_without_an_index_goes_to_the_fallback_without_orig_index() -> None:
    moved = reindex(encoded({"time": 1, "event": "line"}), "fb")
    assert moved is not None
    assert json.loads(moved.payload) == {"time": 1, "event": "line", "index": "fb"}


def test_a_lone_surrogate_keeps_its_escape() -> None:
    event = encoded({"index": "a", "event": "bad \udcff byte"})
    assert b"\\udcff" in event.payload
    moved = reindex(event, "fb")
    assert moved is not None
    assert b"\\udcff" in moved.payload
    assert json.loads(moved.payload)["event"] == "bad \udcff byte"


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1, 2]",
        b'{"index": "fb", "event": "x"}',  # already the fallback: a re-send changes nothing
        b'{"index": "a", "event": "x", "fields": "oops"}',
        b"\xff\xfe",
        b"[" * 100_000,
    ],
)
def test_what_cannot_be_re_addressed_is_none(payload: bytes) -> None:
    assert reindex(EncodedEvent(payload, None), "fb") is None


@given(message=st.text(), index=st.text(min_size=1), fallback=st.text(min_size=1))
def test_any_message_round_trips_except_the_two_values(
    message: str, index: str, fallback: str
) -> None:
    original = {"time": 1.5, "index": index, "fields": {"k": "v"}, "event": message}
    moved = reindex(encoded(original), fallback)
    if index == fallback:
        assert moved is None
        return
    assert moved is not None
    obj = json.loads(moved.payload)
    assert obj.pop("index") == fallback
    assert obj["fields"].pop(ORIG_INDEX_FIELD) == index
    assert obj == {k: v for k, v in original.items() if k != "index"}


def test_the_setting_from_the_environment_and_the_file(tmp_path: Path) -> None:
    assert make_settings().hec.fallback_index is None
    assert make_settings(SPLUNK_FALLBACK_INDEX="lastchance").hec.fallback_index == "lastchance"
    config = tmp_path / "forwarder.toml"
    config.write_text('splunk_fallback_index = "lastchance"\n')
    assert load_settings({}, config).hec.fallback_index == "lastchance"


def test_the_raw_endpoint_warns_that_it_does_not_use_the_fallback(tmp_path: Path) -> None:
    config = tmp_path / "forwarder.toml"
    config.write_text('splunk_fallback_index = "x"\nsplunk_hec_endpoint = "raw"\n')
    settings = load_settings({}, config)
    assert settings.hec.fallback_index == "x"
    (warning,) = [w for w in warnings_for(settings) if "FALLBACK" in w]
    assert "raw endpoint" in warning
    assert not [
        w for w in warnings_for(make_settings(SPLUNK_FALLBACK_INDEX="x")) if "FALLBACK" in w
    ]


@pytest.mark.parametrize("name", ["Last Chance", "_internal", "-x", "a/b", "UPPER"])
def test_a_name_splunk_would_not_take_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=r"SPLUNK_FALLBACK_INDEX.*index name"):
        make_settings(SPLUNK_FALLBACK_INDEX=name)
