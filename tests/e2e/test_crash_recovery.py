"""End to end with real processes on PostgreSQL: an API process without a worker, two worker
processes, one of them killed with SIGKILL in the middle of the run. Two accounts send variant
update jobs and, between them, jobs of other kinds (``tests.e2e.mixed``): variant creates,
updates and deletes over a pool of ids, item updates, and create-update-delete lifecycles."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import httpx2 as httpx
import pytest

from tests.e2e.mixed import ITEM, ITEMS, Job, Mix, check, variant_updates
from tests.support import Cluster, cid, item_body, kill, variant_body

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

ACCOUNTS = ("acme", "globex")
VARIANTS = 60
UPDATE_JOBS = 30
"""Variant update jobs of 100 updates of the first account (the second sends a third as many);
each account sends as many jobs of the other kinds between them."""


def _seed(http: httpx.Client) -> list[str]:
    for item in ITEMS:
        assert http.post("/api/catalog-items", json=item_body(item)).status_code == 201
    externals = [f"V{n}" for n in range(VARIANTS)]
    for external in externals:
        assert (
            http.post("/api/catalog-variants", json=variant_body(external, ITEM)).status_code == 201
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


def _wait_all_complete(
    clients: dict[str, httpx.Client], sent: dict[str, Job], timeout: float
) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    done: dict[str, dict[str, Any]] = {}
    while len(done) < len(sent):
        for job_id, job in sent.items():
            if job_id in done:
                continue
            data = clients[job.account].get(f"{job.path}/{job_id}").json()["data"]
            if data["attributes"]["status"] == "complete":
                done[job_id] = data
        assert time.monotonic() < deadline, f"{len(sent) - len(done)} jobs never completed"
        time.sleep(0.1)
    return done


def test_sigkilled_worker_loses_nothing_and_applies_nothing_twice(
    make_cluster: Callable[..., Cluster], pg_url: str
) -> None:
    cluster = make_cluster(database_url=pg_url, worker_batch_size="2", lease_seconds="2")
    cluster.cli("migrate")
    keys = {account: cluster.new_key(account) for account in ACCOUNTS}
    cluster.serve("--no-worker")
    clients = {account: cluster.client(key) for account, key in keys.items()}
    try:
        _run_and_kill(cluster, clients, pg_url)
    finally:
        for http in clients.values():
            http.close()


def _run_and_kill(cluster: Cluster, clients: dict[str, httpx.Client], pg_url: str) -> None:
    externals = {account: _seed(http) for account, http in clients.items()}
    rng = random.Random(7)
    mix = Mix(8)
    sent: dict[str, Job] = {}
    update_jobs: list[str] = []
    later: dict[int, list[Job]] = {}

    def post(job: Job) -> str:
        response = clients[job.account].post(job.path, json=job.body())
        assert response.status_code == 202, response.text
        job_id: str = response.json()["data"]["id"]
        sent[job_id] = job
        return job_id

    for n in range(UPDATE_JOBS):
        for account in ACCOUNTS:
            if account == ACCOUNTS[0] or n % 3 == 0:
                updates = _random_updates(rng, externals[account], n)
                update_jobs.append(post(variant_updates(account, updates)))
            post(mix.job(account, n))
            if n % 10 == 0:  # a lifecycle: its create now, its update and its delete later
                create, update, delete = Mix.lifecycle(account, n)
                post(create)
                later.setdefault(n + 3, []).append(update)
                later.setdefault(n + 6, []).append(delete)
        for job in later.pop(n, []):
            post(job)
    assert not later
    victim = cluster.start("worker", log="worker-victim.log")
    cluster.start("worker", log="worker-survivor.log")
    # Kill the victim once it is mid-run: some jobs complete, others not yet.
    deadline = time.monotonic() + 30
    while True:
        listed = (
            clients[ACCOUNTS[0]]
            .get(
                "/api/catalog-variant-bulk-update-jobs",
                params={"filter": 'equals(status,"complete")'},
            )
            .json()
        )
        if len(listed["data"]) >= 3:
            break
        assert time.monotonic() < deadline
        time.sleep(0.02)
    kill(victim)
    finished = _wait_all_complete(clients, sent, timeout=90)
    for job_id in update_jobs:
        attributes = finished[job_id]["attributes"]
        assert (
            attributes["completed_count"] + attributes["failed_count"]
            == attributes["total_count"]
            == 100
        )
        assert attributes["failed_count"] == 0
    for job_id, job in sent.items():  # every job as the replay in acceptance order says
        attributes = finished[job_id]["attributes"]
        assert attributes["completed_count"] + attributes["failed_count"] == len(job.entries)
    # Each variant applied exactly as often as sent, with the values of the last update in
    # acceptance order; and so for every resource of every kind of job (see check).
    figures = check(pg_url, externals, lambda row: sent[row.id])
    print(f"\ncommitted and checked: {figures}")
    http = clients[ACCOUNTS[0]]
    got = http.get(f"/api/catalog-variants/{cid(externals[ACCOUNTS[0]][0])}")
    assert got.status_code == 200
    gone = http.get(f"/api/catalog-variants/{cid('L0-0')}")  # created, updated, deleted
    assert gone.status_code == 404
