"""Metrics in prometheus-client's multiprocess mode (``serve``: tests/e2e/test_metrics.py):
each forked process writes its own file, named by the pid ``telemetry`` keeps up to date at
each fork (rather than asking the kernel on every increment), and the scrape adds them up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_SCRIPT = """
import os
from backstock import telemetry

telemetry.observe_request("get_thing", 200, 0.001)
child = os.fork()
if child == 0:
    telemetry.observe_request("get_thing", 200, 0.001)
    telemetry.observe_request("get_thing", 200, 0.001)
    os._exit(0 if telemetry._PID[0] == os.getpid() else 3)
_, status = os.waitpid(child, 0)
assert os.waitstatus_to_exitcode(status) == 0, "the child's kept pid is its parent's"
telemetry.observe_request("get_thing", 200, 0.001)
print(os.getpid(), child)
print(telemetry.exposition([])[0].decode())
"""


def test_each_forked_process_counts_in_its_own_file_and_the_scrape_adds_them_up(
    tmp_path: Path,
) -> None:
    env = os.environ | {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, check=True
    ).stdout
    pids, _, exposition = out.partition("\n")
    parent, child = pids.split()
    assert {f"counter_{parent}.db", f"counter_{child}.db"} <= {p.name for p in tmp_path.iterdir()}
    lines = exposition.splitlines()
    assert 'backstock_requests_total{operation="get_thing",status="200"} 4.0' in lines
    assert 'backstock_request_seconds_count{operation="get_thing"} 4.0' in lines
