"""The soak run, bounded to 30 s: four accounts at twice their rate limit against a real
``backstock serve``. The full run is ``make soak`` (5 minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.soak import run_soak

pytestmark = [pytest.mark.e2e]


def test_thirty_seconds_at_twice_the_rate_limit(tmp_path: Path) -> None:
    result = run_soak(seconds=30, accounts_count=4, limit_per_second=10, workdir=tmp_path)
    assert result.problems() == []
    assert result.accepted > 0 and result.throttled > 0
    assert result.jobs_complete == result.accepted  # every 202 completed, none miscounted
