"""Fault injection: SIGKILL the API process, the worker process, or both, at 24 random moments
while clients send jobs; afterwards no accepted job is lost, no update is applied twice, and no
job is left stuck in ``processing``. On SQLite, with the two processes sharing the file."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from sqlalchemy import create_engine, select

from backstock.storage.schema import jobs
from tests.e2e.mixed import ITEM, ITEMS, Job, Mix, check, matching, variant_updates
from tests.support import Cluster, item_body, kill, variant_body

pytestmark = [pytest.mark.e2e]

KILLS = 24
VARIANTS = 20
ACCOUNT = "acme"


class Client(threading.Thread):
    """Sends jobs until stopped: variant update jobs and, between them, jobs of other kinds
    (``tests.e2e.mixed``). Remembers every job answered 202, and what every other request sent
    (a job the API committed before it was killed has no 202, but its row)."""

    def __init__(self, cluster: Cluster, key: str) -> None:
        super().__init__(daemon=True)
        self.cluster, self.key = cluster, key
        self.accepted: list[str] = []
        self.sent: dict[str, Job] = {}
        """Each job answered 202, by job id."""
        self.unanswered: list[Job] = []
        """Each job sent but not answered 202."""
        self.stop = threading.Event()
        self.rng = random.Random(3)
        self.mix = Mix(4)

    def job_of(self, row: Any) -> Job:
        """What the committed job ``row`` was sent as: its 202's request, or else the one
        unanswered request of its kind naming the resources its row names, in that order."""
        if row.id in self.sent:
            return self.sent[row.id]
        return matching(row.id, row.kind, row.linkage, self.unanswered)

    def jobs(self) -> Iterator[Job]:
        later: dict[int, list[Job]] = {}
        n = 0
        while True:
            updates = [
                (f"V{self.rng.randrange(VARIANTS)}", {"price": float(n * 100 + k)})
                for k in range(20)
            ]
            yield variant_updates(ACCOUNT, updates)
            yield self.mix.job(ACCOUNT, n)
            if n % 10 == 0:  # a lifecycle: its create now, its update and its delete later
                create, update, delete = Mix.lifecycle(ACCOUNT, n)
                yield create
                later.setdefault(n + 3, []).append(update)
                later.setdefault(n + 6, []).append(delete)
            yield from later.pop(n, [])
            n += 1

    def run(self) -> None:
        with self.cluster.client(self.key, timeout=5) as http:
            for job in self.jobs():
                if self.stop.is_set():
                    return
                try:
                    response = http.post(job.path, json=job.body())
                except httpx.TransportError:
                    self.unanswered.append(job)
                    time.sleep(0.05)  # the API is down (killed): try again later
                    continue
                if response.status_code == 202:
                    job_id = response.json()["data"]["id"]
                    self.sent[job_id] = job
                    self.accepted.append(job_id)
                else:
                    self.unanswered.append(job)


def test_random_sigkills_lose_nothing_and_apply_nothing_twice(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'faults.db'}"
    cluster = make_cluster(
        database_url=url, worker_batch_size="3", lease_seconds="1", idle_check_seconds="0.2"
    )
    cluster.cli("migrate")
    key = cluster.new_key(ACCOUNT)
    port_args = _serve(cluster)
    with cluster.client(key) as http:
        for item in ITEMS:
            assert http.post("/api/catalog-items", json=item_body(item)).status_code == 201
        for n in range(VARIANTS):
            assert (
                http.post("/api/catalog-variants", json=variant_body(f"V{n}", ITEM)).status_code
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
    _check(url, client)


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


def _check(url: str, client: Client) -> None:
    engine = create_engine(url)
    with engine.connect() as conn:
        stored = {row.id for row in conn.execute(select(jobs.c.id))}
    engine.dispose()
    assert set(client.accepted) <= stored, "an accepted job was lost"
    # Every committed job complete, in acceptance order, with the outcome of each of its
    # resources; each variant updated as often as committed jobs name it, with the price of
    # the last of them; so for the other kinds too (see check).
    figures = check(url, {ACCOUNT: [f"V{n}" for n in range(VARIANTS)]}, client.job_of)
    unanswered = len(stored) - len(client.accepted)
    print(f"\ncommitted and checked: {figures}; committed without a 202: {unanswered}")
