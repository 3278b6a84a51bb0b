"""``forwarder demo`` (what ``make demo`` runs) keeps working and accounts for every event."""

from __future__ import annotations

import io
import re

import pytest

from forwarder.cli import main

pytestmark = pytest.mark.integration


def test_demo_runs_every_stage_and_accounts_for_every_event() -> None:
    """All six stages run; the summary says every generated event is accounted for."""
    out = io.StringIO()
    status = main(["demo", "--batches", "4", "--lines", "50"], environ={}, out=out)
    text = out.getvalue()
    assert status == 0, text
    for stage in ("1. Firehose transform", "2. Delivery", "3. The token is revoked",
                  "4. The token is fixed", "5. forwarder daemon", "6. HEC goes down"):  # fmt: skip
        assert stage in text
    assert re.search(r"every event accounted for\s+yes", text)
    generated = int(re.search(r"events generated\s+([\d,]+)", text)[1].replace(",", ""))  # type: ignore[index]
    assert generated == 4 * 50 + 6 * 50 + 4 * 50  # stages 2-3, 5 and 6
    assert re.search(r"second run sends \(state file\)\s+0", text)
    # The shaping rule at work: the NODATA record among stage 2's 100 lines is filtered,
    # counted, and part of the balance.
    assert 'drop = [{ message = "* NODATA" }]' in text
    assert re.search(r"filtered by a rule \(counted, not lost\)\s+1\n", text)
    assert re.search(r"dropped by a shaping rule \(counted\)\s+1\n", text)
    # Stage 6 (issue 13, done-when): HEC goes down, its events are backsplashed; the drain
    # finds the gate shut, and once HEC is back empties the backsplash, no manual replay.
    # (One demo run per process: the demo's local AWS keeps its buckets and streams.)
    outage = text[text.index("== 6. HEC goes down") : text.index("== Summary")]
    assert "the drain heals the backsplash by itself, no manual replay" in outage
    assert re.search(r"backsplashed to S3\s+200\n", outage)
    assert int(re.search(r"HEC still down, gate shut\s+(\d+)", outage)[1]) >= 1  # type: ignore[index]
    assert re.search(r"events re-delivered and acknowledged\s+200\n", outage)
    assert re.search(r"given up \(to replay-failed/\)\s+0\n", outage)
    assert re.search(r"objects left under s3://demo-backsplash/outage/\s+0\n", outage)
    assert "forwarder replay" not in outage
