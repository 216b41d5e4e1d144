"""``make test``: every test, in two pytest runs at once.

One run takes the tests that start real processes (marked ``e2e``: the e2e and browser tests),
one after another; the other takes the rest. On the 2-core development machine that took 12
minutes, twice, against 16 for one run of everything the same hour: the e2e tests spend much
of their time waiting (for processes to start, for a lease to lapse, for a 14-second attack
schedule), while the rest keep a core busy. Two e2e tests never run at once, as they would
under ``pytest -n`` (each would get half a core against its own deadlines).

    python scripts/test_streams.py [pytest arguments...]

Each run's lines are printed as they come, prefixed with its name; the exit status is the
first failing run's (0 when both pass). Each run has its own ``--basetemp`` (pytest's numbered
temporary directories are not meant to be shared by two runs at once).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO

STREAMS = {"e2e": ["-m", "e2e"], "rest": ["-m", "not e2e"]}
PATHS = ["tests", "examples"]


def _relay(name: str, out: IO[bytes], lock: threading.Lock) -> None:
    for line in iter(out.readline, b""):
        with lock:
            sys.stdout.write(f"[{name}] {line.decode(errors='replace')}")
            sys.stdout.flush()


def main(argv: list[str]) -> int:
    lock = threading.Lock()
    with tempfile.TemporaryDirectory(prefix="backstock-tests-") as scratch:
        runs: list[tuple[str, subprocess.Popen[bytes], threading.Thread]] = []
        for name, selection in STREAMS.items():
            command = [
                sys.executable, "-m", "pytest", *PATHS, *selection,
                f"--basetemp={Path(scratch) / name}", *argv,
            ]  # fmt: skip
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            assert process.stdout is not None
            relay = threading.Thread(target=_relay, args=(name, process.stdout, lock))
            relay.start()
            runs.append((name, process, relay))
        statuses = []
        for name, process, relay in runs:
            statuses.append(process.wait())
            relay.join()
            print(f"[{name}] pytest exited with {statuses[-1]}", flush=True)
    return next((status for status in statuses if status != 0), 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
