"""How many server processes a plain ``backstock serve`` starts: one per CPU (at most four) when
rate limits are off or shared through Redis, one while they are counted in a process's memory,
and what ``--workers`` says when it is given (with a warning if the limits then multiply)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from backstock.cli.serving import usable_cpus
from backstock.settings import AUTO_MAX_PROCESSES
from tests.support import Cluster, bulk_body, item_body, process_group, variant_body

pytestmark = pytest.mark.e2e


def _server_processes(cluster: Cluster) -> int:
    return len(process_group(cluster.processes[-1])) - 1  # all but serve itself


def _banner(cluster: Cluster) -> str:
    return "".join(path.read_text() for path in cluster.workdir.glob("serve-*.log"))


@pytest.mark.parametrize(
    ("settings", "args", "expected", "said"),
    [
        ({}, (), 1, "auto: one, as rate limits are counted in a process's memory"),
        ({"rate_limits": "off"}, (), min(usable_cpus(), AUTO_MAX_PROCESSES), "auto: one per CPU"),
        ({}, ("--workers", "2"), 2, "2 processes admit up to 2 times each limit"),
    ],
    ids=["limits-in-memory", "limits-off", "told"],
)
def test_serve_starts_as_many_processes_as_its_limits_allow(
    make_cluster: Callable[..., Cluster],
    settings: dict[str, str],
    args: tuple[str, ...],
    expected: int,
    said: str,
) -> None:
    cluster = make_cluster(**{"rate_limits": "on"} | settings)
    del cluster.env["BACKSTOCK_WORKERS"]  # serve's default
    cluster.cli("migrate")
    cluster.serve("--no-worker", *args)
    assert _server_processes(cluster) == expected
    assert f"({expected} process(es) on uvloop," in _banner(cluster)
    assert said in _banner(cluster)


def test_serve_stops_within_its_stop_timeout_when_a_process_cannot_stop(
    make_cluster: Callable[..., Cluster],
) -> None:
    """A server process that never acts on its SIGTERM (stopped here with SIGSTOP; in the wild,
    one still starting when the SIGTERM came) is killed after BACKSTOCK_STOP_TIMEOUT_SECONDS,
    and serve exits: before, granian waited for it forever."""
    cluster = make_cluster(stop_timeout_seconds="2")
    cluster.cli("migrate")
    cluster.serve("--workers", "2", "--no-worker")
    leader = cluster.processes[-1]
    stuck = next(pid for pid in process_group(leader) if pid != leader.pid)
    os.kill(stuck, signal.SIGSTOP)
    started = time.monotonic()
    leader.send_signal(signal.SIGTERM)
    assert leader.wait(20) == 0
    assert time.monotonic() - started < 10
    assert not Path(f"/proc/{stuck}").exists() or _zombie(stuck)


def _zombie(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"


def _worker_processes(cluster: Cluster) -> list[int]:
    found = []
    for pid in process_group(cluster.processes[-1]):
        with contextlib.suppress(OSError):  # ended meanwhile
            if b"backstock\0worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


def _thread_nices(pid: int) -> set[int]:
    """The nice values of a process's threads (``/proc/<pid>/task/*/stat``, field 19)."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread ended meanwhile
            found.add(int((task / "stat").read_text().rpartition(")")[2].split()[16]))
    return found


def _apply_one_job(cluster: Cluster, key: str, price: float, within: float) -> None:
    with cluster.client(key) as http:
        started = time.monotonic()
        response = http.post(
            "/api/catalog-variant-bulk-update-jobs", json=bulk_body([("V", {"price": price})])
        )
        assert response.status_code == 202
        path = f"/api/catalog-variant-bulk-update-jobs/{response.json()['data']['id']}"
        while http.get(path).json()["data"]["attributes"]["status"] != "complete":
            assert time.monotonic() - started < within, "not applied in time"
            time.sleep(0.01)
        assert (
            http.get("/api/catalog-variants/$custom:::$default:::V").json()["data"]["attributes"][
                "price"
            ]
            == price
        )


def _wait_for_workers_running(cluster: Cluster, count: int) -> None:
    """Until ``count`` worker processes have said they run (they listen by then)."""
    deadline = time.monotonic() + 30
    while _banner(cluster).count("Worker running") < count:
        assert time.monotonic() < deadline, _banner(cluster)
        time.sleep(0.05)


def test_serve_applies_jobs_in_a_worker_process_of_its_own_woken_across_processes(
    make_cluster: Callable[..., Cluster],
) -> None:
    """The worker is a process of serve's, not a thread of the API's: it is woken by the API
    process that accepted a job (SQLite: ``FileBus``), long before its idle check (60 s here)
    would find it; killed, serve starts another, which is woken the same way. Jobs one after
    the other: the first after a start may be found by the worker's first claim, the next
    ones only by a wake-up."""
    cluster = make_cluster(idle_check_seconds="60")
    cluster.cli("migrate")
    key = cluster.new_key()
    cluster.serve()
    _wait_for_workers_running(cluster, 1)
    (worker,) = _worker_processes(cluster)
    assert _server_processes(cluster) == 2  # one API process and the worker
    assert "worker 1 process(es) of its own" in _banner(cluster)
    # It yields the cores to the API's requests (BACKSTOCK_WORKER_NICE, 10 by default): every
    # thread of it, the ones applying jobs included; serve and its API processes do not.
    own = os.getpriority(os.PRIO_PROCESS, 0)
    assert _thread_nices(worker) == {min(own + 10, 19)}
    api = set(process_group(cluster.processes[-1])) - {worker}
    assert set().union(*(_thread_nices(pid) for pid in api)) == {own}
    with cluster.client(key) as http:
        assert http.post("/api/catalog-items", json=item_body("I")).status_code == 201
        assert http.post("/api/catalog-variants", json=variant_body("V", "I")).status_code == 201
    for price in (1.0, 2.0, 3.0):
        _apply_one_job(cluster, key, price, within=5)
    os.kill(worker, signal.SIGKILL)
    _wait_for_workers_running(cluster, 2)
    assert "A worker process exited (-9); starting another in 1 s" in _banner(cluster)
    for price in (4.0, 5.0):
        _apply_one_job(cluster, key, price, within=5)


def test_sigterm_to_serve_alone_stops_its_worker_process(
    make_cluster: Callable[..., Cluster],
) -> None:
    """``kill <serve's pid>`` (docker stop, systemd's KillMode=mixed): serve stops its server
    processes, then its worker process, and exits; nothing of the group is left."""
    cluster = make_cluster()
    cluster.cli("migrate")
    cluster.serve()
    _wait_for_workers_running(cluster, 1)
    leader = cluster.processes[-1]
    group = process_group(leader)
    assert len(group) == 3  # serve, its server process, its worker process
    leader.send_signal(signal.SIGTERM)
    assert leader.wait(30) == 0
    deadline = time.monotonic() + 10
    while process_group(leader):  # the children, reaped by serve before it exited
        assert time.monotonic() < deadline, process_group(leader)
        time.sleep(0.05)


def test_a_worker_process_whose_serve_is_gone_stops(
    make_cluster: Callable[..., Cluster],
) -> None:
    """serve SIGKILLed (no chance to stop its children): its worker process notices that its
    parent is gone and stops, rather than claiming jobs on its own."""
    cluster = make_cluster()
    cluster.cli("migrate")
    cluster.serve()
    _wait_for_workers_running(cluster, 1)
    (worker,) = _worker_processes(cluster)
    os.kill(cluster.processes[-1].pid, signal.SIGKILL)
    cluster.processes[-1].wait(10)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{worker}").exists() and not _zombie(worker):
        assert time.monotonic() < deadline, "the orphaned worker process kept running"
        time.sleep(0.05)


def test_serve_on_postgresql_says_when_autovacuum_is_off(
    make_cluster: Callable[..., Cluster], pg_url: str
) -> None:
    """An operator hears at start that the server will slow down without vacuum (this
    machine's PostgreSQL runs with autovacuum off; a production one says nothing)."""
    with psycopg.connect(pg_url) as conn:  # autovacuum works only with both on
        settings = [
            conn.execute(sql).fetchone() for sql in ("SHOW autovacuum", "SHOW track_counts")
        ]
    cluster = make_cluster(database_url=pg_url)
    cluster.cli("migrate")
    cluster.serve()
    _wait_for_workers_running(cluster, 1)
    said = _banner(cluster).replace("\n", " ")
    caution = "PostgreSQL runs with autovacuum off"
    assert said.count(caution) == (
        0 if settings == [("on",)] * 2 else 1
    )  # serve's, not its worker's
