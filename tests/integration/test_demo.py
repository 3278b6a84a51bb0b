"""``forwarder demo`` (what ``make demo`` runs) keeps working and accounts for every event."""

from __future__ import annotations

import io
import re

import pytest

from forwarder.cli import main

pytestmark = pytest.mark.integration


def test_demo_runs_every_stage_and_accounts_for_every_event() -> None:
    """All five stages run; the summary says every generated event is accounted for."""
    out = io.StringIO()
    status = main(["demo", "--batches", "4", "--lines", "50"], environ={}, out=out)
    text = out.getvalue()
    assert status == 0, text
    for stage in ("1. Firehose transform", "2. Delivery", "3. The token is revoked",
                  "4. The token is fixed", "5. forwarder daemon"):  # fmt: skip
        assert stage in text
    assert re.search(r"every event accounted for\s+yes", text)
    generated = int(re.search(r"events generated\s+([\d,]+)", text)[1].replace(",", ""))  # type: ignore[index]
    assert generated == 4 * 50 + 6 * 50
    assert re.search(r"second run sends \(state file\)\s+0", text)
    # The shaping rule at work: the NODATA record among stage 2's 100 lines is filtered,
    # counted, and part of the balance.
    assert 'drop = [{ message = "* NODATA" }]' in text
    assert re.search(r"filtered by a rule \(counted, not lost\)\s+1\n", text)
    assert re.search(r"dropped by a shaping rule \(counted\)\s+1\n", text)
