"""Scale-out: two API processes and three worker processes on PostgreSQL and Redis, 300 jobs
from many concurrent clients over overlapping variants, one worker SIGKILLed halfway."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx2 as httpx
import pytest
from sqlalchemy import create_engine, select

from backstock.storage.database import sqlalchemy_url
from backstock.storage.schema import catalog_variants, jobs
from tests.conftest import REDIS_URL
from tests.support import Cluster, bulk_body, item_body, kill, variant_body

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]

ACCOUNTS = ("acme", "globex", "initech")
VARIANTS = 30
JOBS = 300
CLIENTS = 8


def _post_job(http: httpx.Client, updates: list[tuple[str, dict[str, Any]]]) -> str:
    while True:
        response = http.post("/api/catalog-variant-bulk-update-jobs", json=bulk_body(updates))
        if response.status_code != 429:
            assert response.status_code == 202, response.text
            return str(response.json()["data"]["id"])
        time.sleep(int(response.headers["Retry-After"]))


def test_two_api_and_three_worker_processes_keep_every_guarantee(
    make_cluster: Callable[..., Cluster], pg_url: str
) -> None:
    cluster = make_cluster(
        database_url=pg_url, redis_url=REDIS_URL, redis_key_prefix=f"e2e-{uuid.uuid4().hex}",
        rate_limits="on", write_limits="1000/second;100000/minute", worker_batch_size="5",
        lease_seconds="2",
    )  # fmt: skip
    cluster.cli("migrate")
    keys = {a: cluster.new_key(a) for a in ACCOUNTS}
    cluster.serve("--workers", "2", "--no-worker")
    workers = [cluster.start("worker", log=f"worker-{n}.log") for n in range(3)]
    clients = {account: cluster.client(key) for account, key in keys.items()}
    try:
        for http in clients.values():
            assert http.post("/api/catalog-items", json=item_body("I")).status_code == 201
            for n in range(VARIANTS):
                assert (
                    http.post("/api/catalog-variants", json=variant_body(f"V{n}", "I")).status_code
                    == 201
                )
        sent: dict[str, tuple[str, list[tuple[str, dict[str, Any]]]]] = {}
        lock = threading.Lock()

        def client(seed: int) -> None:
            rng = random.Random(seed)
            for n in range(JOBS // CLIENTS + (1 if seed < JOBS % CLIENTS else 0)):
                account = rng.choice(ACCOUNTS)
                updates = [
                    (
                        f"V{rng.randrange(VARIANTS)}",
                        {"price": float(seed * 10_000 + n * 100 + k), "sku": f"{seed}-{n}-{k}"},
                    )
                    for k in range(20)
                ]
                job_id = _post_job(clients[account], updates)
                with lock:
                    sent[job_id] = (account, updates)

        threads = [threading.Thread(target=client, args=(s,)) for s in range(CLIENTS)]
        for thread in threads:
            thread.start()
        killed = False
        while any(t.is_alive() for t in threads) or not killed:
            if not killed and _completed(pg_url) >= JOBS // 2:
                kill(workers[0])
                killed = True
            time.sleep(0.05)
        for thread in threads:
            thread.join()
        assert len(sent) == JOBS
        _wait_until(lambda: _completed(pg_url) == JOBS, 120)
        _check_catalog(pg_url, sent)
    finally:
        for http in clients.values():
            http.close()


def _completed(pg_url: str) -> int:
    engine = create_engine(sqlalchemy_url(pg_url))
    with engine.connect() as conn:
        count = len(conn.execute(select(jobs.c.pk).where(jobs.c.status == "complete")).all())
    engine.dispose()
    return count


def _wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _check_catalog(
    pg_url: str, sent: dict[str, tuple[str, list[tuple[str, dict[str, Any]]]]]
) -> None:
    engine = create_engine(sqlalchemy_url(pg_url))
    with engine.connect() as conn:
        job_rows = conn.execute(select(jobs).order_by(jobs.c.pk)).all()
        variant_rows = conn.execute(select(catalog_variants)).all()
        names = {row.id: row.account_id for row in job_rows}
    engine.dispose()
    state: dict[tuple[int, str], dict[str, Any]] = {}
    counts: dict[tuple[int, str], int] = {}
    for row in job_rows:  # acceptance order
        assert row.completed_count + row.failed_count == row.total_count == 20
        assert row.failed_count == 0
        for external, changes in sent[row.id][1]:
            key = (names[row.id], external)
            state.setdefault(key, {}).update(changes)
            counts[key] = counts.get(key, 0) + 1
    for row in variant_rows:
        key = (row.account_id, row.external_id)
        assert row.update_count == counts.get(key, 0), key
        if key in state:
            assert (row.price, row.sku) == (state[key]["price"], state[key]["sku"]), key
