"""``/metrics`` of a real ``backstock serve``: every server process counts in the directory
``serve`` names for them, and a scrape (answered by any one of them) adds them all up."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import httpx2 as httpx
import pytest

from backstock import telemetry
from tests.support import Cluster

pytestmark = pytest.mark.e2e


def _count(base_url: str, operation: str) -> float:
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    pattern = rf'^backstock_requests_total{{operation="{operation}",status="200"}} (\S+)$'
    found = re.search(pattern, text, re.MULTILINE)
    return float(found[1]) if found else 0.0


def test_the_requests_every_server_process_answered_add_up_on_metrics(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster()
    cluster.env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # serve's own directory, as by default
    cluster.cli("migrate")
    key = cluster.new_key()
    cluster.serve("--workers", "2", "--no-worker")
    assert _count(cluster.base_url, "get_catalog_items") == 0
    for _ in range(40):  # a new connection each: both processes take some
        with cluster.client(key) as http:
            assert http.get("/api/catalog-items").status_code == 200
    # each process counts its requests within FLUSH_SECONDS (the one scraped, at once)
    deadline = time.monotonic() + telemetry.FLUSH_SECONDS + 5
    while (counted := _count(cluster.base_url, "get_catalog_items")) < 40:
        assert time.monotonic() < deadline, counted
        time.sleep(0.05)
    assert counted == 40
    # the scrapes themselves are counted too: at least the two before the one that saw all 40
    # (another process's scrape within FLUSH_SECONDS, as any request)
    while (scrapes := _count(cluster.base_url, "metrics")) < 2:
        assert time.monotonic() < deadline, scrapes
        time.sleep(0.05)
