"""SQLite faults that are not crashes, against a real ``backstock serve`` and its in-process
worker: the file locked by another process, the disk full, writes failing with I/O errors, a
read-only database file.

Each test runs a client that spawns jobs and reads non-stop. Big jobs (100 updates, one per
transaction) keep the worker busy, and the fault comes on while it is in the middle of one. The
test waits for clients' 503s (JSON:API, with ``Retry-After`` and a detail that names the fault),
for reads served meanwhile, and for the worker to have failed more often than the 5 tries after
which a batch that fails for a *bug* is given up. Then it lifts the fault and checks: every
job answered ``202`` is complete with no failed item, every variant's ``update_count`` equals
the number of committed updates that named it (nothing applied twice, nothing skipped), the
final prices are those of replaying the jobs in acceptance order, and ``PRAGMA
integrity_check`` says ``ok``. Nothing is restarted to recover.
"""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from backstock.domain.jobs import linked_external_ids
from backstock.storage.database import BUSY_TIMEOUT_MS
from backstock.worker import POISON_TRIES
from tests.conftest import IN_CI
from tests.support import Cluster, bulk_body, item_body, process_group, variant_body

pytestmark = [pytest.mark.e2e]

JOBS = "/api/catalog-variant-bulk-update-jobs"
VARIANTS = 12
BUSY = BUSY_TIMEOUT_MS / 1000
BIG_JOBS = 40
"""Big jobs queued so that a fault brought on finds the worker still busy with them (serve's
worker process, with a core of its own, gets through 20 before some faults are on)."""
Updates = list[tuple[str, dict[str, Any]]]


# ---- a client that never stops ---------------------------------------------------------------


@dataclass
class Outcome:
    kind: str  # "spawn" or "read"
    started: float
    elapsed: float
    status: int
    retry_after: str | None = None
    error: dict[str, Any] | None = None


@dataclass
class Traffic:
    """A thread that spawns a job of 6 updates, reads (a page of variants, or one of its
    jobs), and again, until stopped. Every request is remembered; so is every job answered
    202, and what every spawn sent."""

    cluster: Cluster
    key: str
    seed: int
    sent: dict[str, Updates] = field(default_factory=dict)
    """The updates of each job answered 202 (or queued beforehand), by job id."""
    accepted: list[str] = field(default_factory=list)
    refused: list[Updates] = field(default_factory=list)
    """The updates of each spawn not answered 202."""
    outcomes: list[Outcome] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    failure: BaseException | None = None

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.accepted.extend(job for job in self.sent if job not in self.accepted)

    def accept(self, job_id: str, updates: Updates) -> None:
        self.sent[job_id] = updates
        self.accepted.append(job_id)

    def updates_of(self, job_id: str, linkage: str) -> Updates:
        """What the job committed as ``job_id`` holds: its 202's request, or else the one
        refused request naming the variants its row names, in that order."""
        externals = linked_external_ids(linkage)
        if job_id in self.sent:
            updates = self.sent[job_id]
            assert [e for e, _ in updates] == externals, job_id
            return updates
        matching = [u for u in self.refused if [e for e, _ in u] == externals]
        assert matching, f"job {job_id} was committed but no client sent it"
        assert all(u == matching[0] for u in matching), f"job {job_id}: which request?"
        return matching[0]

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self._thread.join(BUSY + 20)
        assert not self._thread.is_alive(), "the client is stuck"
        if self.failure is not None:
            raise self.failure

    def _run(self) -> None:
        rng = random.Random(self.seed)
        try:
            with self.cluster.client(self.key, timeout=BUSY + 15) as http:
                n = 0
                while not self.stop.is_set():
                    n += 1
                    if n % 2:
                        updates = [
                            (f"V{rng.randrange(VARIANTS)}", {"price": float(n * 1000 + k)})
                            for k in range(6)
                        ]
                        self._send(http, "spawn", "POST", JOBS, updates, json=bulk_body(updates))
                    elif n % 4 == 0 and self.accepted:
                        self._send(http, "read", "GET", f"{JOBS}/{rng.choice(self.accepted)}")
                    else:
                        self._send(http, "read", "GET", "/api/catalog-variants")
        except BaseException as exc:
            self.failure = exc

    def _send(
        self,
        http: Any,
        kind: str,
        method: str,
        path: str,
        updates: Updates | None = None,
        **kw: Any,
    ) -> None:
        started = time.monotonic()
        try:
            response = http.request(method, path, **kw)
        except BaseException:
            if updates is not None:
                self.refused.append(updates)  # its fate is unknown
            raise
        outcome = Outcome(kind, started, time.monotonic() - started, response.status_code)
        if response.status_code >= 400:
            outcome.retry_after = response.headers.get("Retry-After")
            outcome.error = response.json()["errors"][0]
            if updates is not None:
                self.refused.append(updates)
        elif kind == "spawn":
            assert response.status_code == 202, response.text
            assert updates is not None
            self.accept(response.json()["data"]["id"], updates)
        self.outcomes.append(outcome)
        if response.status_code == 503:
            self.stop.wait(0.05)  # a little patience, as a client honouring Retry-After has

    def since(self, moment: float, kind: str, status: int) -> int:
        """How many requests of ``kind`` sent after ``moment`` were answered ``status``."""
        return sum(
            o.kind == kind and o.status == status and o.started >= moment
            for o in list(self.outcomes)
        )

    def wait_for(self, what: str, condition: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.failure is None, self.failure
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.summary()}"
            time.sleep(0.05)

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for o in list(self.outcomes):
            counts[f"{o.kind} {o.status}"] = counts.get(f"{o.kind} {o.status}", 0) + 1
        return counts


# ---- the database, read directly ------------------------------------------------------------

INSPECT = """
import json, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=10)
conn.row_factory = sqlite3.Row
jobs = conn.execute(
    "SELECT id, status, next_index, total_count, completed_count, failed_count, linkage"
    " FROM jobs ORDER BY pk"
).fetchall()
print(json.dumps({
    "integrity": [r[0] for r in conn.execute("PRAGMA integrity_check")],
    "jobs": [dict(r) for r in jobs],
    "variants": [
        list(r) for r in conn.execute("SELECT external_id, update_count, price FROM catalog_variants")
    ],
}))
"""


def inspect(cluster: Cluster, db: Path) -> dict[str, Any]:
    """The database's jobs and variants, and its integrity check, read by a process started
    the way the server is (as its user, in its mount namespace)."""
    done = subprocess.run(
        [*cluster.launcher, sys.executable, "-c", INSPECT, str(db)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def wait_until_all_complete(cluster: Cluster, db: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        left = [job for job in inspect(cluster, db)["jobs"] if job["status"] != "complete"]
        if not left:
            return
        assert time.monotonic() < deadline, f"{len(left)} jobs not complete"
        time.sleep(0.1)


def check_exactly_once(cluster: Cluster, db: Path, traffic: Traffic) -> dict[str, Any]:
    """Lost: accepted and not complete. Applied twice (or skipped): a variant whose
    ``update_count`` is not the number of committed updates naming it (the job rows name
    them; the clients know what each set)."""
    accepted = traffic.accepted
    found = inspect(cluster, db)
    jobs = found["jobs"]
    complete = {job["id"] for job in jobs if job["status"] == "complete"}
    lost = set(accepted) - complete
    failed = [job["id"] for job in jobs if job["completed_count"] != job["total_count"]]
    counts: dict[str, int] = {}
    prices: dict[str, float] = {}
    for job in jobs:  # in acceptance order
        for external in linked_external_ids(job["linkage"]):
            counts[external] = counts.get(external, 0) + 1
        for external, changes in traffic.updates_of(job["id"], job["linkage"]):
            prices[external] = changes["price"]
    variants = found["variants"]
    twice = [e for e, n, _ in variants if n != counts.get(e, 0)]
    wrong = [e for e, _, price in variants if e in prices and price != prices[e]]
    figures = {
        "jobs accepted": len(accepted),
        "jobs committed": len(jobs),
        "updates": sum(counts.values()),
        "lost": len(lost),
        "items failed": sum(job["failed_count"] for job in jobs),
        "applied twice or skipped": len(twice),
        "integrity_check": found["integrity"][0],
    }
    assert found["integrity"] == ["ok"], found["integrity"]
    assert not lost, f"{len(lost)} accepted jobs lost"
    assert not failed, f"jobs with failed items: {failed}"
    assert not twice, f"update_count off for {twice}"
    assert not wrong, f"final price off for {wrong}"
    return figures


# ---- the scenario every fault goes through ---------------------------------------------------


def start(cluster: Cluster, *serve_args: str) -> str:
    key = cluster.new_key()  # which creates and migrates the database
    cluster.serve(*serve_args)
    with cluster.client(key) as http:
        assert http.post("/api/catalog-items", json=item_body("I")).status_code == 201
        for n in range(VARIANTS):
            response = http.post("/api/catalog-variants", json=variant_body(f"V{n}", "I"))
            assert response.status_code == 201, response.text
    return key


def worker_retries(cluster: Cluster) -> int:
    """How many times the server's worker has logged a failure it will retry."""
    log = cluster.workdir / f"serve-{cluster.base_url.rsplit(':', 1)[1]}.log"
    with log.open() as lines:
        return sum("backstock.worker" in line and "retrying" in line for line in lines)


def busy_worker(cluster: Cluster, key: str, traffic: Traffic) -> None:
    """Returns when the worker is at most half-way through a big job (100 updates applied one
    per transaction), so that a fault brought on now finds it in the middle of that job. More
    big jobs wait behind it: the worker takes well under a millisecond a batch, and bringing a
    fault on takes longer than the rest of one job."""
    with cluster.client(key) as http:
        deadline = time.monotonic() + 30
        while True:
            big = []
            for n in range(BIG_JOBS):
                updates = [
                    (f"V{k % VARIANTS}", {"price": -float(n * 1000 + k)}) for k in range(100)
                ]
                response = http.post(JOBS, json=bulk_body(updates))
                assert response.status_code == 202, response.text
                big.append(response.json()["data"]["id"])
                traffic.accept(big[-1], updates)
            for job_id in big:  # each in turn: watch it until it is under way, or past half-way
                while True:
                    job = http.get(f"{JOBS}/{job_id}").json()["data"]["attributes"]
                    if job["status"] == "processing" and 0 < job["completed_count"] <= 50:
                        return
                    if job["status"] == "complete" or job["completed_count"] > 50:
                        break  # missed it (a slow poll): the next one
                    assert time.monotonic() < deadline, job
                    time.sleep(0.001)


@dataclass
class Fault:
    name: str
    on: Callable[[], None]
    off: Callable[[], None]
    detail: str  # words the 503's detail must hold
    retry_after: str
    worker_logs: bool = True  # False: its failures cannot be logged (file writes fail)


def go_through(
    fault: Fault,
    cluster: Cluster,
    key: str,
    db: Path,
    *,
    accepted: dict[str, Updates] | None = None,
    mid_job: bool = True,
) -> dict[str, Any]:
    """Traffic; the worker mid-job; the fault on until clients saw 503s and reads and the
    worker failed more than ``POISON_TRIES`` times; the fault off; everything checked.
    Without ``mid_job`` the fault is on from the start. Returns the figures."""
    seed = sum(map(ord, fault.name))
    with Traffic(cluster, key, seed, sent=dict(accepted or {})) as traffic:
        if mid_job:
            traffic.wait_for("jobs accepted", lambda: traffic.since(0, "spawn", 202) >= 5, 10)
            busy_worker(cluster, key, traffic)
        tries = worker_retries(cluster) if mid_job else 0  # else all were during the fault
        fault.on()
        began = time.monotonic()
        stuck = not mid_job  # seen stuck in the middle of a job since
        try:

            def worker_failed_enough() -> bool:
                """The worker, stuck mid-job, failed more than ``POISON_TRIES`` times."""
                nonlocal stuck
                stuck = stuck or any(
                    j["status"] == "processing" and 0 < j["next_index"] < j["total_count"]
                    for j in inspect(cluster, db)["jobs"]
                )
                if not stuck:
                    return False
                if fault.worker_logs:
                    return worker_retries(cluster) - tries > POISON_TRIES
                # Its backoff (0.05 s doubling) makes 6 tries in 1.6 s; 2.5 s is ample.
                return time.monotonic() - began > 2.5

            traffic.wait_for(
                f"503s, reads and worker retries while {fault.name}",
                lambda: (
                    traffic.since(began, "spawn", 503) >= 5
                    and traffic.since(began, "read", 200) >= 5
                    and worker_failed_enough()
                ),
                BUSY + 20,
            )
        finally:
            fault.off()
        ended = time.monotonic()
        during = [o for o in traffic.outcomes if began <= o.started < ended]
        traffic.wait_for("jobs accepted again", lambda: traffic.since(ended, "spawn", 202) >= 5, 20)
    refused = [o for o in traffic.outcomes if o.status not in (200, 202)]
    for o in refused:  # every refusal: a JSON:API 503 naming the fault, with Retry-After
        assert o.kind == "spawn", f"a read was refused: {o}"
        assert (o.status, o.retry_after) == (503, fault.retry_after), o
        assert o.error is not None
        assert o.error["status"] == "503" and o.error["code"] == "service_unavailable", o
        assert fault.detail in o.error["detail"], o
    assert any(o.kind == "read" and o.status == 200 for o in during)
    wait_until_all_complete(cluster, db)
    figures = {
        "fault for, s": round(ended - began, 1),
        "requests": len(traffic.outcomes),
        "requests during fault": len(during),
        "503 during fault": sum(o.status == 503 for o in during),
        "reads served during fault": sum(o.status == 200 for o in during),
        "worker retries": worker_retries(cluster) - tries if fault.worker_logs else "not logged",
        "slowest request, s": round(max(o.elapsed for o in traffic.outcomes), 2),
        "slowest read, s": round(max(o.elapsed for o in traffic.outcomes if o.kind == "read"), 2),
    }
    figures |= check_exactly_once(cluster, db, traffic)
    print(f"\n{fault.name}: {figures}")
    return figures


# ---- 1. the file locked by another process -------------------------------------------------

LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
sys.stdin.readline()
conn.execute("BEGIN EXCLUSIVE")
conn.execute("DELETE FROM jobs")  # a write of its own, never committed
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


def test_a_file_locked_by_another_process(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    """Another process holds the write lock (``BEGIN EXCLUSIVE``) well past the busy timeout:
    writes get 503 (the first after the busy timeout, the next ones at once until one gets
    through), reads go on, nobody waits much longer than the busy timeout, the worker retries;
    once the lock is gone everything completes."""
    db = tmp_path / "locked.db"
    cluster = make_cluster(database_url=f"sqlite:///{db}", worker_batch_size="1")
    key = start(cluster)
    with subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as locker:
        assert locker.stdin is not None and locker.stdout is not None
        stdin, stdout = locker.stdin, locker.stdout

        def lock() -> None:
            stdin.write("go\n")
            stdin.flush()
            assert stdout.readline() == "locked\n"

        def unlock() -> None:
            stdin.write("go\n")
            stdin.flush()
            assert locker.wait(10) == 0

        fault = Fault("locked", lock, unlock, "locked by another writer", retry_after="1")
        figures = go_through(fault, cluster, key, db)
    # a write waits out the busy timeout once; then writes fail at once until one gets through
    assert figures["slowest request, s"] < BUSY + 3
    # the waiting write is on a thread of its own: reads go on meanwhile (a read is not held
    # for the busy timeout; 2 s of slack for a loaded CI machine, where one read took 1.04 s)
    assert figures["slowest read, s"] < BUSY / 5


# ---- 2. the disk full ------------------------------------------------------------------------


@dataclass
class SmallDisk:
    """A tmpfs in a mount namespace of its own, held by a sleeping process. ``enter`` runs a
    command inside it; ``outside`` is where this process sees its files (fine for files, not
    for SQLite, which resolves the /proc/PID/root link back to this namespace)."""

    holder: subprocess.Popen[str]
    mountpoint: Path

    @property
    def enter(self) -> list[str]:
        user = [] if os.geteuid() == 0 else ["--user", "--preserve-credentials"]
        return ["nsenter", f"--target={self.holder.pid}", "--mount", *user, "--"]

    @property
    def outside(self) -> Path:
        return Path(f"/proc/{self.holder.pid}/root") / self.mountpoint.relative_to("/")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    # root: a mount namespace; anyone else: inside a user namespace of their own
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    script = f"mount -t tmpfs -o size=32m tmpfs '{mountpoint}' && echo mounted && exec sleep 600"
    with subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", *user, "sh", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdout is not None and holder.stderr is not None
        if holder.stdout.readline() != "mounted\n":
            holder.wait(10)
            message = f"cannot mount a tmpfs in a private mount namespace: {holder.stderr.read()}"
            if IN_CI:
                pytest.fail(f"{message}; under CI=true this test must run")
            pytest.skip(message)
        try:
            yield SmallDisk(holder, mountpoint)
        finally:
            holder.kill()
            holder.wait(10)


def test_the_disk_full(small_disk: SmallDisk, make_cluster: Callable[..., Cluster]) -> None:
    """The database's file system fills up (another program's file takes the last byte;
    SQLite says SQLITE_FULL): writes get 503 saying so, reads go on, the worker retries
    without failing or skipping items; once the file is deleted everything completes."""
    db = small_disk.mountpoint / "full.db"  # as the server sees it
    cluster = make_cluster(database_url=f"sqlite:///{db}", worker_batch_size="1")
    cluster.launcher = small_disk.enter
    key = start(cluster)
    with subprocess.Popen(
        [*cluster.launcher, sys.executable, "-c", FILLER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as filler:
        assert filler.stdin is not None and filler.stdout is not None
        stdin, stdout = filler.stdin, filler.stdout

        def fill() -> None:
            stdin.write("go\n")
            stdin.flush()
            # not busy, nothing left in the WAL; not a byte left on the disk
            assert stdout.readline() == "(0, 0, 0) 0\n"

        unlink = (small_disk.outside / "filler").unlink
        fault = Fault("disk full", fill, unlink, "disk is full", "5")
        go_through(fault, cluster, key, db)
        stdin.close()
        assert filler.wait(10) == 0


FILLER = """
import contextlib, errno, os, shutil, sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
directory = os.path.dirname(sys.argv[1])
for _ in sys.stdin:
    # An empty WAL, so that the jobs to come append to it, and the disk full stops SQLite at
    # once: after a checkpoint, SQLite reuses its WAL file from the start, and may go on for a
    # few hundred transactions on a full disk before it needs a byte more. (The worker takes
    # well under a millisecond a transaction: the two steps follow each other at once here.)
    # Busy at once, without the busy handler, while another connection checkpoints (the
    # server's checkpoint thread, or SQLite's own at 1,000 pages): try again until it is done.
    deadline = time.monotonic() + 30
    while True:
        checkpointed = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if not checkpointed[0] or time.monotonic() > deadline:
            break
        time.sleep(0.001)
    # Then the file system filled to the last byte, as another program would. At once: the
    # server appends to the WAL meanwhile, and a fallocate of what was free a moment ago fails.
    chunk = bytes(1 << 20)
    with open(os.path.join(directory, "filler"), "wb", buffering=0) as out:
        for _ in range(100):
            free = shutil.disk_usage(directory).free
            if not free:
                break
            with contextlib.suppress(OSError):
                os.posix_fallocate(out.fileno(), os.fstat(out.fileno()).st_size, free)
        out.seek(0, os.SEEK_END)
        while chunk:
            try:
                out.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                chunk = chunk[: len(chunk) // 2]
    print(checkpointed, shutil.disk_usage(directory).free, flush=True)
"""


# ---- 3. writes failing with I/O errors -------------------------------------------------------


def test_writes_failing_with_io_errors(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    """The server's file writes fail: RLIMIT_FSIZE set to 1 byte on its running processes, so
    every write past a file's first byte fails with EFBIG (Python ignores SIGXFSZ), which
    SQLite reports as SQLITE_IOERR. Writes get 503 naming the I/O error, reads go on; once the
    limit is lifted everything completes."""
    db = tmp_path / "ioerr.db"
    cluster = make_cluster(database_url=f"sqlite:///{db}", worker_batch_size="1")
    key = start(cluster)
    processes = process_group(cluster.processes[0])
    assert len(processes) >= 2, processes  # serve and at least one server process
    unlimited = resource.getrlimit(resource.RLIMIT_FSIZE)

    def limit(size: tuple[int, int]) -> None:
        for pid in processes:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, size)

    fault = Fault(
        "I/O errors",
        lambda: limit((1, unlimited[1])),
        lambda: limit(unlimited),
        "I/O error",
        "5",
        worker_logs=False,  # its log is a file too
    )
    go_through(fault, cluster, key, db)


# ---- 4. a read-only database file ------------------------------------------------------------


@pytest.fixture
def unprivileged() -> list[str]:
    """How to run the server so that permission bits bind it: as root, without the
    capabilities to override them (root otherwise writes whatever the bits say)."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


def database_files(db: Path) -> list[Path]:
    return [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists()]


def test_a_read_only_database_file(
    make_cluster: Callable[..., Cluster], unprivileged: list[str], tmp_path: Path
) -> None:
    """The server starts on a database file it may not write (a restored backup with the wrong
    owner, a read-only volume), with jobs queued in it: reads are served, writes get 503
    naming the read-only database, the worker retries without failing anything. Once the
    files are writable again the server recovers without a restart and every job completes.

    (A file that turns read-only under a running server changes nothing for SQLite: its open
    descriptors keep write access. Only connections opened afterwards are read-only.)"""
    db = tmp_path / "ro.db"
    cluster = make_cluster(database_url=f"sqlite:///{db}", worker_batch_size="1")
    cluster.launcher = unprivileged
    key = start(cluster, "--no-worker")
    queued: dict[str, Updates] = {}
    with cluster.client(key) as http:
        for n in range(5):
            updates = [(f"V{(n + k) % VARIANTS}", {"price": float(n)}) for k in range(8)]
            response = http.post(JOBS, json=bulk_body(updates))
            assert response.status_code == 202, response.text
            queued[response.json()["data"]["id"]] = updates
    cluster.stop_all()
    cluster.processes.clear()
    for path in database_files(db):
        path.chmod(0o444)
    cluster.serve()  # with its worker, which finds the queued jobs and cannot run them

    def writable() -> None:
        # as an operator would: every file of the database (SQLite creates the -wal and -shm
        # files with the main file's permissions)
        for path in database_files(db):
            path.chmod(0o644)

    def still_queued() -> None:
        with cluster.client(key) as http:
            job = http.get(f"{JOBS}/{next(iter(queued))}").json()["data"]["attributes"]
            assert (job["status"], job["completed_count"], job["failed_count"]) == ("queued", 0, 0)

    fault = Fault("read-only", still_queued, writable, "read-only", "5")
    go_through(fault, cluster, key, db, accepted=queued, mid_job=False)
