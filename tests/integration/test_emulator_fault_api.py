"""The emulator's control API: ``POST /emulator/faults`` takes the CLI flags' names as well as
the plan's field names, and the README's example and flag table say what the code does."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from forwarder.devtools.emulator import (
    FLAG_KEYS,
    FaultPlan,
    HecEmulator,
    add_arguments,
    fault_field,
    serve,
)
from tests.conftest import TEST_TOKEN

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def emulator_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser


def control_api_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("#### The emulator's control API")
    return text[start : text.index("\n### ", start)]


@pytest.fixture(name="hec")
def fixture_hec() -> Iterator[HecEmulator]:
    with HecEmulator(token=TEST_TOKEN) as hec:
        yield hec


def send_event(hec: HecEmulator) -> requests.Response:
    return requests.post(
        f"{hec.url}/services/collector/event",
        data=b'{"event": "x"}',
        headers={
            "Authorization": f"Splunk {TEST_TOKEN}",
            "X-Splunk-Request-Channel": str(uuid.uuid4()),
        },
        timeout=30,
    )


def test_the_readme_curl_example_works(hec: HecEmulator) -> None:
    """GIVEN the README's curl bodies, sent as curl -d sends them THEN the first sets busy 2,
    500 once and Retry-After, which the next data requests meet; the last clears the plan."""
    bodies = [
        shlex.split(line, comments=True)[-1]
        for line in control_api_section().splitlines()
        if line.startswith("curl -s -X POST") and "/emulator/faults -d " in line
    ]
    assert len(bodies) == 2
    form = {"Content-Type": "application/x-www-form-urlencoded"}  # what curl -d sends
    url = f"{hec.url}/emulator/faults"
    answer = requests.post(url, data=bodies[0], headers=form, timeout=30)
    assert answer.status_code == 200
    shown = requests.get(url, timeout=30).json()
    assert answer.json() == shown
    assert (shown["busy_requests"], shown["error_500_requests"], shown["retry_after_s"]) == (
        2,
        1,
        1,
    )
    statuses = [send_event(hec) for _ in range(4)]
    assert [r.status_code for r in statuses] == [503, 503, 500, 200]
    assert statuses[0].headers["Retry-After"] == "1"
    assert hec.stats().faults_injected == {"busy": 2, "error_500": 1}
    assert requests.post(url, data=bodies[1], headers=form, timeout=30).status_code == 200
    assert requests.get(url, timeout=30).json() == FaultPlan().to_mapping()


@pytest.mark.parametrize(
    ("key", "value", "field", "expected"),
    [
        ("busy", 3, "busy_requests", 3),
        ("errors_500", 2, "error_500_requests", 2),
        ("errors-500", 2, "error_500_requests", 2),
        ("--resets", 1, "reset_requests", 1),
        ("no-acks", True, "ack_disabled", True),
        ("ack-delay", 2, "ack_delay_s", 2.0),
        ("p-busy", 0.5, "p_busy", 0.5),
        ("unhealthy-code", 19, "unhealthy_code", 19),
        ("busy_requests", 4, "busy_requests", 4),
    ],
)
def test_a_fault_by_its_flag_name_or_its_field_name(
    hec: HecEmulator, key: str, value: Any, field: str, expected: Any
) -> None:
    answer = requests.post(f"{hec.url}/emulator/faults", json={key: value}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()[field] == expected
    assert getattr(hec.current_faults(), field) == expected


def test_two_names_for_one_fault_are_refused_and_the_plan_stays(hec: HecEmulator) -> None:
    url = f"{hec.url}/emulator/faults"
    assert requests.post(url, json={"busy": 1}, timeout=30).status_code == 200
    answer = requests.post(url, json={"busy": 2, "busy_requests": 3}, timeout=30)
    assert answer.status_code == 400
    assert answer.json()["text"] == "fault keys 'busy' and 'busy_requests' set the same fault"
    assert requests.get(url, timeout=30).json()["busy_requests"] == 1


def test_an_unknown_key_is_named_with_the_known_flags(hec: HecEmulator) -> None:
    answer = requests.post(f"{hec.url}/emulator/faults", json={"bussy": 1}, timeout=30)
    assert answer.status_code == 400
    text = answer.json()["text"]
    assert text.startswith("unknown fault keys: bussy (known: the hec-emulator flags ack-delay,")
    assert "errors-500" in text


def test_a_wrong_type_names_the_key_as_given() -> None:
    with pytest.raises(ValueError, match="fault 'errors-500' must be int"):
        FaultPlan.from_mapping({"errors-500": "two"})


def test_every_fault_has_one_flag_and_the_same_default() -> None:
    """FLAG_KEYS covers every FaultPlan field once; each key is a hec-emulator flag whose
    default is the plan's default."""
    plan_fields = {f.name: f.default for f in dataclasses.fields(FaultPlan)}
    assert sorted(FLAG_KEYS.values()) == sorted(plan_fields)
    parser = emulator_parser()
    defaults = {action.dest: action.default for action in parser._actions}
    for flag, name in FLAG_KEYS.items():
        assert flag in defaults, f"--{flag.replace('_', '-')} is not a hec-emulator flag"
        assert defaults[flag] == plan_fields[name], flag
    assert all(fault_field(flag) == name for flag, name in FLAG_KEYS.items())
    assert all(fault_field(name) == name for name in plan_fields)


def test_the_readme_flag_table_matches_the_code() -> None:
    pairs = re.findall(r"`--([a-z0-9-]+)` \| `([a-z0-9_]+)`", control_api_section())
    assert pairs
    table = {flag.replace("-", "_"): key for flag, key in pairs}
    for flag, key in table.items():
        assert FLAG_KEYS[flag] == key
    named = set(table) | {name for name in FLAG_KEYS if name.startswith("p_")}
    assert named == set(FLAG_KEYS)


def test_the_new_flags_reach_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """--unhealthy-code and --lost-ack-drops-data (the faults that had no flag) reach serve()'s
    plan, like every other flag."""
    args = emulator_parser().parse_args(
        ["--unhealthy-code", "19", "--lost-acks", "2", "--lost-ack-drops-data", "--port", "0"]
    )
    captured: list[FaultPlan] = []

    class Captured(Exception):
        pass

    def fake_start(self: HecEmulator) -> HecEmulator:
        captured.append(self.current_faults())
        raise Captured

    monkeypatch.setattr(HecEmulator, "start", fake_start)
    with pytest.raises(Captured):
        serve(args)
    assert captured == [FaultPlan(unhealthy_code=19, lost_acks=2, lost_ack_drops_data=True)]


def test_get_shows_what_post_set(hec: HecEmulator) -> None:
    url = f"{hec.url}/emulator/faults"
    body = {"drips": 1, "drip-interval": 0.5, "seed": 7}
    assert requests.post(url, data=json.dumps(body), timeout=30).status_code == 200
    shown = requests.get(url, timeout=30).json()
    assert (shown["drip_requests"], shown["drip_interval_s"], shown["seed"]) == (1, 0.5, 7)
