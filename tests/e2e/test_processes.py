"""Real processes: rate limits shared by two API processes through Redis, and a worker that
hands its job back on SIGTERM."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import create_engine, select

from backstock.storage.database import sqlalchemy_url
from backstock.storage.schema import jobs
from tests.conftest import REDIS_URL
from tests.support import Cluster, bulk_body, item_body, variant_body

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


@pytest.mark.redis
def test_two_api_processes_sharing_redis_admit_what_one_would(
    make_cluster: Callable[..., Cluster], pg_url: str
) -> None:
    # A minute-long window, so how long the requests take cannot change the count.
    cluster = make_cluster(
        database_url=pg_url, redis_url=REDIS_URL, redis_key_prefix=f"e2e-{uuid.uuid4().hex}",
        rate_limits="on", write_limits="1000/second;20/minute", redis_timeout_seconds="5",
    )  # fmt: skip
    cluster.cli("migrate")
    key = cluster.new_key()
    cluster.serve("--workers", "2", "--no-worker")
    statuses: list[int] = []
    for _ in range(60):  # new connections, so both processes take requests
        with cluster.client(key) as http:
            response = http.post(
                "/api/catalog-variant-bulk-update-jobs", json=bulk_body([("V", {"price": 1.0})])
            )
            statuses.append(response.status_code)
    assert statuses.count(202) == 20 and statuses.count(429) == 40
    engine = create_engine(sqlalchemy_url(pg_url))
    with engine.connect() as conn:
        assert len(conn.execute(select(jobs.c.pk)).all()) == 20
    engine.dispose()


def test_sigterm_hands_the_job_back_and_exits(
    make_cluster: Callable[..., Cluster], pg_url: str
) -> None:
    cluster = make_cluster(database_url=pg_url, worker_batch_size="1", lease_seconds="60")
    cluster.cli("migrate")
    key = cluster.new_key()
    cluster.serve("--no-worker")
    with cluster.client(key) as http:
        assert http.post("/api/catalog-items", json=item_body("I")).status_code == 201
        assert http.post("/api/catalog-variants", json=variant_body("V", "I")).status_code == 201
        response = http.post(
            "/api/catalog-variant-bulk-update-jobs",
            json=bulk_body([("V", {"price": float(n)}) for n in range(100)]),
        )
        job_id = response.json()["data"]["id"]
        worker = cluster.start("worker", log="worker.log")
        deadline = time.monotonic() + 30
        while (
            http.get(f"/api/catalog-variant-bulk-update-jobs/{job_id}").json()["data"][
                "attributes"
            ]["completed_count"]
            < 3
        ):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(10) == 0  # finished its batch, handed the job back, exited
        job = http.get(f"/api/catalog-variant-bulk-update-jobs/{job_id}").json()["data"][
            "attributes"
        ]
        if job["status"] != "complete":  # it was mid-job: queued again at once, not leased
            assert job["status"] == "queued"
            cluster.start("worker", log="worker-2.log")  # a 60 s lease would delay a dead job
            deadline = time.monotonic() + 10
            while job["status"] != "complete":
                assert time.monotonic() < deadline, "the job was not handed back"
                time.sleep(0.05)
                job = http.get(f"/api/catalog-variant-bulk-update-jobs/{job_id}").json()["data"][
                    "attributes"
                ]
        assert job["completed_count"] == 100
