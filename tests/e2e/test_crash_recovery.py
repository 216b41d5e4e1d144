"""End to end with real processes on PostgreSQL: an API process without a worker, two worker
processes, one of them killed with SIGKILL in the middle of the run."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import httpx2 as httpx
import pytest
from sqlalchemy import create_engine, select

from backstock.storage.database import sqlalchemy_url
from backstock.storage.schema import catalog_variants, jobs
from tests.support import Cluster, bulk_body, cid, item_body, kill, variant_body

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

VARIANTS = 60


def _seed(http: httpx.Client) -> list[str]:
    assert http.post("/api/catalog-items", json=item_body("I")).status_code == 201
    externals = [f"V{n}" for n in range(VARIANTS)]
    for external in externals:
        assert (
            http.post("/api/catalog-variants", json=variant_body(external, "I")).status_code == 201
        )
    return externals


def _random_updates(
    rng: random.Random, externals: list[str], n: int
) -> list[tuple[str, dict[str, Any]]]:
    updates = []
    for k in range(100):
        changes: dict[str, Any] = {"price": float(n * 1000 + k)}
        if rng.random() < 0.5:
            changes["sku"] = f"job{n}-{k}"
        if rng.random() < 0.3:
            changes["inventory_quantity"] = float(k)
        updates.append((rng.choice(externals), changes))
    return updates


def _expected(
    database_url: str, sent: dict[str, list[tuple[str, dict[str, Any]]]]
) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """Apply the jobs one by one in acceptance order (the order of their rows)."""
    engine = create_engine(sqlalchemy_url(database_url))
    with engine.connect() as conn:
        order = [row.id for row in conn.execute(select(jobs.c.id).order_by(jobs.c.pk))]
    engine.dispose()
    state: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    for job_id in order:
        for external, changes in sent[job_id]:
            state.setdefault(external, {}).update(changes)
            counts[external] = counts.get(external, 0) + 1
    return state, counts


def _wait_all_complete(
    http: httpx.Client, job_ids: list[str], timeout: float
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    done: dict[str, dict[str, Any]] = {}
    while len(done) < len(job_ids):
        for job_id in job_ids:
            if job_id in done:
                continue
            data = http.get(f"/api/catalog-variant-bulk-update-jobs/{job_id}").json()["data"]
            if data["attributes"]["status"] == "complete":
                done[job_id] = data
        assert time.monotonic() < deadline, f"{len(job_ids) - len(done)} jobs never completed"
        time.sleep(0.1)
    return list(done.values())


def test_sigkilled_worker_loses_nothing_and_applies_nothing_twice(
    make_cluster: Callable[..., Cluster], pg_url: str
) -> None:
    cluster = make_cluster(database_url=pg_url, worker_batch_size="2", lease_seconds="2")
    cluster.cli("migrate")
    key = cluster.new_key()
    cluster.serve("--no-worker")
    with cluster.client(key) as http:
        _run_and_kill(cluster, http, pg_url)


def _run_and_kill(cluster: Cluster, http: httpx.Client, pg_url: str) -> None:
    externals = _seed(http)
    rng = random.Random(7)
    sent: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for n in range(30):
        updates = _random_updates(rng, externals, n)
        response = http.post("/api/catalog-variant-bulk-update-jobs", json=bulk_body(updates))
        assert response.status_code == 202, response.text
        sent[response.json()["data"]["id"]] = updates
    victim = cluster.start("worker", log="worker-victim.log")
    cluster.start("worker", log="worker-survivor.log")
    # Kill the victim once it is mid-run: some jobs complete, others not yet.
    deadline = time.monotonic() + 30
    while True:
        listed = http.get(
            "/api/catalog-variant-bulk-update-jobs", params={"filter": 'equals(status,"complete")'}
        ).json()
        if len(listed["data"]) >= 3:
            break
        assert time.monotonic() < deadline
        time.sleep(0.02)
    kill(victim)
    finished = _wait_all_complete(http, list(sent), timeout=90)
    for job in finished:
        attributes = job["attributes"]
        assert (
            attributes["completed_count"] + attributes["failed_count"]
            == attributes["total_count"]
            == 100
        )
        assert attributes["failed_count"] == 0
    state, counts = _expected(pg_url, sent)
    engine = create_engine(sqlalchemy_url(pg_url))
    with engine.connect() as conn:
        rows = {r.external_id: r for r in conn.execute(select(catalog_variants))}
    engine.dispose()
    for external, changes in state.items():
        row = rows[external]
        assert row.update_count == counts[external], (
            f"{external} applied {row.update_count}x, sent {counts[external]}x"
        )
        for name, value in changes.items():
            assert getattr(row, name) == value, (external, name)
    got = http.get(f"/api/catalog-variants/{cid(externals[0])}")
    assert got.status_code == 200
