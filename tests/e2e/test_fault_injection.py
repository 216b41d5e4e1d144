"""Fault injection: SIGKILL the API process, the worker process, or both, at 24 random moments
while clients send jobs; afterwards no accepted job is lost, no update is applied twice, and no
job is left stuck in ``processing``. On SQLite, with the two processes sharing the file."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx2 as httpx
import pytest
from backstock.domain.bulk import load_payload
from sqlalchemy import create_engine, select

from backstock.storage.schema import catalog_variants, jobs
from tests.support import Cluster, bulk_body, item_body, kill, variant_body

pytestmark = [pytest.mark.e2e]

KILLS = 24
VARIANTS = 20


class Client(threading.Thread):
    """Sends jobs until stopped; remembers every job id that was answered 202."""

    def __init__(self, cluster: Cluster, key: str) -> None:
        super().__init__(daemon=True)
        self.cluster, self.key = cluster, key
        self.accepted: list[str] = []
        self.stop = threading.Event()
        self.rng = random.Random(3)

    def run(self) -> None:
        with self.cluster.client(self.key, timeout=5) as http:
            n = 0
            while not self.stop.is_set():
                updates = [
                    (f"V{self.rng.randrange(VARIANTS)}", {"price": float(n * 100 + k)})
                    for k in range(20)
                ]
                n += 1
                try:
                    response = http.post(
                        "/api/catalog-variant-bulk-update-jobs", json=bulk_body(updates)
                    )
                except httpx.TransportError:
                    time.sleep(0.05)  # the API is down (killed): try again later
                    continue
                if response.status_code == 202:
                    self.accepted.append(response.json()["data"]["id"])


def test_random_sigkills_lose_nothing_and_apply_nothing_twice(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'faults.db'}"
    cluster = make_cluster(
        database_url=url, worker_batch_size="3", lease_seconds="1", idle_check_seconds="0.2"
    )
    cluster.cli("migrate")
    key = cluster.new_key()
    port_args = _serve(cluster)
    with cluster.client(key) as http:
        assert http.post("/api/catalog-items", json=item_body("I")).status_code == 201
        for n in range(VARIANTS):
            assert (
                http.post("/api/catalog-variants", json=variant_body(f"V{n}", "I")).status_code
                == 201
            )
    worker = cluster.start("worker", log="worker.log")
    client = Client(cluster, key)
    client.start()
    rng = random.Random(11)
    kills = {"api": 0, "worker": 0, "both": 0}
    for _ in range(KILLS):
        time.sleep(rng.uniform(0.05, 0.4))
        victim = rng.choice(["api", "worker", "both"])
        kills[victim] += 1
        if victim in ("api", "both"):
            kill(cluster.processes[0])
            cluster.processes.pop(0)
            _serve(cluster, port_args)
        if victim in ("worker", "both"):
            kill(worker)
            worker = cluster.start("worker", log="worker.log")
    client.stop.set()
    client.join(10)
    assert min(kills.values()) > 0 and len(client.accepted) > 20
    _wait_for_all(url, timeout=60)
    _check(url, client.accepted)


def _serve(cluster: Cluster, port_args: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Start ``serve --no-worker`` (at the same port as before when restarting) first in the list."""
    if port_args:
        process_count = len(cluster.processes)
        cluster.start("serve", "--no-worker", *port_args, log="serve.log")
        cluster.processes.insert(0, cluster.processes.pop(process_count))
        _wait_healthy(cluster.base_url)
        return port_args
    cluster.serve("--no-worker")
    return ("--port", cluster.base_url.rsplit(":", 1)[1])


def _wait_healthy(base_url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("API did not come back")


def _wait_for_all(url: str, timeout: float) -> None:
    engine = create_engine(url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.connect() as conn:
                open_jobs = conn.execute(select(jobs.c.pk).where(jobs.c.status != "complete")).all()
            if not open_jobs:
                return
            assert time.monotonic() < deadline, f"{len(open_jobs)} jobs stuck"
            time.sleep(0.2)
    finally:
        engine.dispose()


def _check(url: str, accepted: list[str]) -> None:
    engine = create_engine(url)
    with engine.connect() as conn:
        job_rows = conn.execute(select(jobs).order_by(jobs.c.pk)).all()
        variants = {r.external_id: r for r in conn.execute(select(catalog_variants))}
    engine.dispose()
    stored = {row.id for row in job_rows}
    assert set(accepted) <= stored, "an accepted job was lost"
    expected: dict[str, float] = {}
    counts: dict[str, int] = {}
    for row in job_rows:  # every committed job, in acceptance order
        assert row.completed_count + row.failed_count == row.total_count
        for external, changes in load_payload(row.payload):
            expected[external] = changes.as_dict()["price"]
            counts[external] = counts.get(external, 0) + 1
    for external, row in variants.items():
        assert row.update_count == counts.get(external, 0), (
            f"{external}: {row.update_count} != {counts.get(external, 0)}"
        )
        if external in expected:
            assert row.price == expected[external]
