"""Scale-out: two API processes and three worker processes on PostgreSQL and Redis, 300 variant
update jobs from many concurrent clients over overlapping variants, and between them jobs of
other kinds for the same accounts (``tests.e2e.mixed``), one worker SIGKILLed halfway."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable

import httpx2 as httpx
import pytest
from sqlalchemy import create_engine, select

from backstock.storage.database import sqlalchemy_url
from backstock.storage.schema import jobs
from tests.conftest import REDIS_URL
from tests.e2e.mixed import ITEM, ITEMS, Job, Mix, check, variant_updates
from tests.support import Cluster, item_body, kill, variant_body

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]

ACCOUNTS = ("acme", "globex", "initech")
VARIANTS = 30
JOBS = 300
CLIENTS = 8


def _post_job(http: httpx.Client, job: Job) -> str:
    while True:
        response = http.post(job.path, json=job.body())
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
            for item in ITEMS:
                assert http.post("/api/catalog-items", json=item_body(item)).status_code == 201
            for n in range(VARIANTS):
                assert (
                    http.post("/api/catalog-variants", json=variant_body(f"V{n}", ITEM)).status_code
                    == 201
                )
        sent: dict[str, Job] = {}
        update_jobs: list[str] = []
        lock = threading.Lock()

        def client(seed: int) -> None:
            rng = random.Random(seed)
            mix = Mix(seed + 100)
            lifecycle = Mix.lifecycle(ACCOUNTS[seed % len(ACCOUNTS)], seed)
            for n in range(JOBS // CLIENTS + (1 if seed < JOBS % CLIENTS else 0)):
                account = rng.choice(ACCOUNTS)
                updates = [
                    (
                        f"V{rng.randrange(VARIANTS)}",
                        {"price": float(seed * 10_000 + n * 100 + k), "sku": f"{seed}-{n}-{k}"},
                    )
                    for k in range(20)
                ]
                job_id = _post_job(clients[account], variant_updates(account, updates))
                more = [mix.job(account, seed * 1000 + n)] if n % 3 == 0 else []
                if n % 4 == 2 and lifecycle:  # its create, its update, its delete, in order
                    more.append(lifecycle.pop(0))
                with lock:
                    sent[job_id] = variant_updates(account, updates)
                    update_jobs.append(job_id)
                for job in more:
                    other = _post_job(clients[job.account], job)
                    with lock:
                        sent[other] = job
            assert not lifecycle

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
        assert len(update_jobs) == JOBS
        _wait_until(lambda: _completed(pg_url) == len(sent), 120)
        _check_catalog(pg_url, sent, update_jobs)
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


def _check_catalog(pg_url: str, sent: dict[str, Job], update_jobs: list[str]) -> None:
    engine = create_engine(sqlalchemy_url(pg_url))
    with engine.connect() as conn:
        job_rows = conn.execute(select(jobs).order_by(jobs.c.pk)).all()
    engine.dispose()
    assert {row.id for row in job_rows} == sent.keys()
    variant_update_jobs = set(update_jobs)
    for row in job_rows:
        if row.id in variant_update_jobs:
            assert row.completed_count + row.failed_count == row.total_count == 20
            assert row.failed_count == 0
    # Per account, in acceptance order: each variant updated as often as the jobs name it,
    # with the price and sku of the last; so for every resource of the other kinds of job.
    seeded = {account: [f"V{n}" for n in range(VARIANTS)] for account in ACCOUNTS}
    print(f"\ncommitted and checked: {check(pg_url, seeded, lambda row: sent[row.id])}")
