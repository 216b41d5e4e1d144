"""How many server processes a plain ``backstock serve`` starts: one per CPU (at most four) when
rate limits are off or shared through Redis, one while they are counted in a process's memory,
and what ``--workers`` says when it is given (with a warning if the limits then multiply)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from backstock.cli.serving import usable_cpus
from backstock.settings import AUTO_MAX_PROCESSES
from tests.support import Cluster, process_group

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
    assert f"({expected} process(es)" in _banner(cluster)
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
