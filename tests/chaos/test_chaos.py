"""The short chaos run: every delivery path under random HEC faults and outages, end-checked.

``make chaos`` runs the full version (``python -m tests.chaos.harness``); this one is a few
thousand events. The seed is printed; ``CHAOS_SEED=<seed>`` replays it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.harness import ChaosConfig, default_seed, run_chaos

pytestmark = pytest.mark.integration


def test_short_chaos_run_loses_nothing_and_keeps_its_deadlines(tmp_path: Path) -> None:
    """GIVEN push, daemon (Kinesis resharded, sqs-s3) and forward under HEC and S3 chaos
    THEN every event is indexed, backsplashed or spooled, every ledger balances, every
    duplicate is explained and no run passes its deadline."""
    config = ChaosConfig.short(default_seed())

    report = run_chaos(config, tmp_path)

    print(report.render())
    assert report.failures == [], report.render()
