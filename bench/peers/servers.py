"""The servers of ``make bench-peers``: Backstock (SQLite and PostgreSQL, one and N processes),
the floors of ``make bench`` on SQLite (one and N processes), and the stateless mocks people run
to fake Klaviyo: WireMock with hand-written stubs (``wiremock/mappings/``) and Prism serving
Klaviyo's OpenAPI document. The mocks are installed once with npm into a cache directory;
WireMock runs on the machine's Java.

Every server runs in its own process group, so it can be paused (``SIGSTOP``) while the others
are measured: Backstock's job worker, draining the jobs of its spawn rounds, and the JVM's
compiler and collector would otherwise load the shared cores under another server's round.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg

from backstock.storage.migrate import autovacuum_is_off
from bench.dbs import pg_url
from bench.peers.body import JOBS_PATH, create_body, headers, item_body, update_body, variant_ids
from bench.procs import PYTHON, Server, free_port, request

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SPEC = REPO / "tests" / "contract" / "klaviyo" / "klaviyo-catalogs.openapi.json"
"""Klaviyo's OpenAPI document of every ``/api/catalog-*`` operation (revision 2026-07-15)."""
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "backstock-bench/peers"
PACKAGES = {"wiremock": "3.13.2", "@stoplight/prism-cli": "5.16.0"}
MOCK_KEY = "pk_peers_bench"
"""The mocks' Authorization (Prism checks that one is sent, WireMock's stubs ignore it)."""
MOCK_JOB = "01M8T0VH06047KTD07HFAN2SXC"
"""The job id the mocks are asked for (the stubs' job; Prism answers any id)."""

WIREMOCK_FLAGS = (
    "--no-request-journal", "--disable-request-logging", "--disable-banner", "--disable-gzip",
    "--disable-response-templating", "--disable-http2-plain", "--disable-extensions-scanning",
    "--use-chunked-encoding", "never",
)  # fmt: skip
"""As fast as WireMock goes: no journal, no logging, no templating or gzip, Content-Length."""
PRISM_FLAGS = ("--dynamic", "false", "--verboseLevel", "error", "--cors", "false")
"""Static examples (no schema faking), only errors logged, no CORS headers."""


# ---- installation ------------------------------------------------------------------------------


def installed_version(package: str, cache: Path = CACHE) -> str | None:
    manifest = cache / "node_modules" / package / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def install(cache: Path = CACHE) -> dict[str, str]:
    """WireMock and Prism at their pinned versions in ``cache`` (npm, once); their versions.
    Exits non-zero, saying why, when npm is missing or cannot install them."""
    wanted = [f"{name}@{version}" for name, version in PACKAGES.items()]
    if all(installed_version(n, cache) == v for n, v in PACKAGES.items()):
        return dict(PACKAGES)
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm is not installed: install Node.js 20+ (with npm) and run again.")
    cache.mkdir(parents=True, exist_ok=True)
    print(f"Installing {' '.join(wanted)} into {cache} (npm, once) ...", flush=True)
    command = [npm, "install", "--prefix", str(cache), "--no-audit", "--no-fund", *wanted]
    done = subprocess.run(command, capture_output=True, check=False, timeout=900)
    if done.returncode != 0:
        raise SystemExit(
            f"npm could not install the mocks ({' '.join(command)} exited "
            f"{done.returncode}):\n{(done.stdout + done.stderr).decode(errors='replace')[-3000:]}"
        )
    missing = [n for n, v in PACKAGES.items() if installed_version(n, cache) != v]
    if missing:
        raise SystemExit(f"npm finished but {', '.join(missing)} is not in {cache}/node_modules")
    return dict(PACKAGES)


def wiremock_jar(cache: Path = CACHE) -> Path:
    return next((cache / "node_modules" / "wiremock" / "build").glob("wiremock-standalone-*.jar"))


def java_version(java: str) -> str:
    done = subprocess.run([java, "-version"], capture_output=True, check=False)
    lines = done.stderr.decode().splitlines()
    return lines[0] if lines else "?"


# ---- servers -----------------------------------------------------------------------------------


@dataclass
class Peer(Server):
    """A server of the comparison: ready when ``health_path`` answers 200 to a
    request with ``health_headers`` (Prism has no health route: it answers a job's GET)."""

    label: str = ""
    family: str = ""
    """``backstock``, ``wiremock`` or ``prism``."""
    key: str = MOCK_KEY
    job_id: str = MOCK_JOB
    health_headers: dict[str, str] = field(default_factory=dict)
    db_name: str | None = None
    """The PostgreSQL database Backstock serves (its backends' CPU is counted apart)."""
    db_url: str | None = None
    paused: bool = False

    def start(self, timeout: float = 90.0) -> Peer:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                self.command, env=dict(self.env), stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.label} exited at start:\n{self.tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _ = request(self.port, "GET", self.health_path, None,
                                    self.health_headers, timeout=2)  # fmt: skip
                if status == 200:
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.label} did not answer in {timeout} s:\n{self.tail()}")
            time.sleep(0.1)

    def pause(self, attempts: int = 2000, settle: float = 0.02) -> None:
        """Stop the server's processes (SIGSTOP). A Backstock on PostgreSQL is stopped only
        between its transactions: a transaction held open by a stopped process holds back what
        PostgreSQL may prune and vacuum in every database of the cluster (each backend's
        snapshot starts at the oldest transaction still running), so the other Backstock's
        rounds would pile up dead row versions it could not remove. What a process sent just
        before it stopped may not have reached its backend yet (a ``BEGIN`` and a statement,
        in pipeline mode): the check waits ``settle`` seconds first, and checks again after
        four times as long, else it could pass before that transaction starts and leave it
        open for the other server's whole round."""
        if self.db_url is None or not self.db_url.startswith("postgresql"):
            self._signal(signal.SIGSTOP)
        else:
            with psycopg.connect(self.db_url, autocommit=True) as conn:
                for _ in range(attempts):
                    self._signal(signal.SIGSTOP)
                    if all(_quiet_after(conn, wait) for wait in (settle, settle * 4)):
                        break  # the second look: a busy machine may run a backend late
                    self._signal(signal.SIGCONT)
                    time.sleep(0.002)
                else:  # stopped as it is, and said: the next rounds' PostgreSQL figures suffer
                    self._signal(signal.SIGSTOP)
                    print(f"{self.label}: paused inside a transaction", file=sys.stderr)
        self.paused = True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        if self.paused:  # a stopped process would not see SIGTERM
            self.resume()
        super().stop()

    def _signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)


def _quiet_after(conn: psycopg.Connection[Any], seconds: float) -> bool:
    time.sleep(seconds)
    return not open_transactions(conn)


def open_transactions(conn: psycopg.Connection[Any]) -> int:
    """The transactions open in ``conn``'s database, other than ``conn``'s."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
    ).fetchone()
    return int(row[0]) if row else 0


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKSTOCK_", "BENCH_"))}
    return env | extra


def wiremock(workdir: Path, java: str, cache: Path = CACHE) -> Peer:
    port = free_port()
    command = [java, "-jar", str(wiremock_jar(cache)), "--port", str(port), "--bind-address",
               "127.0.0.1", "--root-dir", str(HERE / "wiremock"), *WIREMOCK_FLAGS]  # fmt: skip
    return Peer("wiremock", command, clean_env(), workdir / "wiremock.log", port,
                health_path="/__admin/health", label="WireMock", family="wiremock")  # fmt: skip


def prism(workdir: Path, cache: Path = CACHE) -> Peer:
    port = free_port()
    binary = cache / "node_modules" / ".bin" / "prism"
    command = [str(binary), "mock", "--host", "127.0.0.1", "--port", str(port), *PRISM_FLAGS,
               str(SPEC)]  # fmt: skip
    return Peer("prism", command, clean_env(), workdir / "prism.log", port,
                health_path=f"{JOBS_PATH}/{MOCK_JOB}", label="Prism", family="prism",
                health_headers=headers(MOCK_KEY, post=False))  # fmt: skip


# ---- Backstock ---------------------------------------------------------------------------------


def backstock_env(db_url: str) -> dict[str, str]:
    """``backstock serve``'s defaults (SQLite ``synchronous=FULL``, its worker process)
    except: rate limits off (the benchmark measures serving, not the limiter); warnings only in
    the log (the mocks log nothing either); the per-account caps of open jobs (500) and queued
    bytes (256 MB) lifted, as ``make bench`` does, since the spawn rounds queue jobs far faster
    than one worker applies them (their counter UPDATE still runs on every spawn); and a lease
    longer than the run, since a paused server's leases would otherwise lapse and its worker
    redo their batches."""
    return clean_env(
        BACKSTOCK_DATABASE_URL=db_url,
        BACKSTOCK_RATE_LIMITS="off",
        BACKSTOCK_LOG_LEVEL="warning",
        BACKSTOCK_MAX_JOBS_IN_PROGRESS="1000000000",
        BACKSTOCK_MAX_QUEUED_BYTES=str(2**50),
        BACKSTOCK_LEASE_SECONDS="3600",
    )


def backstock_cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([PYTHON, "-m", "backstock", *args], env=env, capture_output=True,
                          check=False)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"backstock {' '.join(args)} failed:\n{done.stderr.decode()[-2000:]}")
    return done.stdout.decode().strip()


def backstock(workdir: Path, kind: str, processes: int, pg_admin: str, created: list[str]) -> Peer:
    """A Backstock on a fresh database (``backstock migrate``) with a key (``backstock keys
    create``); ``created`` collects the PostgreSQL databases to drop at the end."""
    name = f"backstock-{kind}-{processes}p"
    db_name = None
    if kind == "sqlite":
        db_url = f"sqlite:///{workdir / name}.db"
    else:
        db_name = f"backstock_peers_{processes}p_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(pg_admin, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{db_name}"')
        created.append(db_name)
        db_url = pg_url(pg_admin, db_name)
    env = backstock_env(db_url)
    backstock_cli(env, "migrate")
    key = backstock_cli(env, "keys", "create", "--account", "peers", "--scope", "catalogs:read",
                        "--scope", "catalogs:write").splitlines()[-1]  # fmt: skip
    port = free_port()
    command = [PYTHON, "-m", "backstock", "serve", "--port", str(port), "--workers", str(processes)]
    engine = "SQLite" if kind == "sqlite" else "PostgreSQL"
    return Peer(name, command, env, workdir / f"{name}.log", port,
                label=f"Backstock {engine}, {processes} proc", family="backstock", key=key,
                db_name=db_name, db_url=db_url)  # fmt: skip


def floor(workdir: Path, seeded: Peer, processes: int) -> Peer:
    """The floors of ``make bench`` as one server (``bench/floor_peer.py``) with ``processes``
    processes under granian, as ``serve`` runs, over a copy of ``seeded``'s SQLite file (so
    its GET reads the same job from the same tables). ``seeded`` is paused, idle."""
    import sqlite3

    assert seeded.db_url is not None
    assert seeded.db_url.startswith("sqlite:///")
    name = f"floor-sqlite-{processes}p"
    path = workdir / f"{name}.db"
    source = sqlite3.connect(seeded.db_url.removeprefix("sqlite:///"))
    with contextlib.closing(source), contextlib.closing(sqlite3.connect(path)) as copy:
        source.backup(copy)
    port = free_port()
    command = [PYTHON, "-m", "bench.serve", "granian", "bench.floor_peer:create", "--port",
               str(port), "--workers", str(processes)]  # fmt: skip
    label = f"Floor SQLite, {processes} proc"
    return Peer(name, command, clean_env(BENCH_FLOOR_DB=f"sqlite:///{path}"),
                workdir / f"{name}.log", port, health_path="/", label=label, family="floor",
                key=seeded.key, job_id=seeded.job_id)  # fmt: skip


def seed(server: Peer, timeout: float = 60.0) -> None:
    """The item and the 100 variants the bulk body updates (through the API, applied by the
    server's worker), then one update job applied in full: the job every GET round reads."""
    ids = variant_ids()
    _call(server, "POST", "/api/catalog-items", item_body(), 201)
    created = _call(server, "POST", "/api/catalog-variant-bulk-create-jobs", create_body(ids), 202)
    _wait_complete(server, "/api/catalog-variant-bulk-create-jobs/" + created["data"]["id"],
                   timeout)  # fmt: skip
    job = _call(server, "POST", JOBS_PATH, update_body(ids), 202)
    server.job_id = job["data"]["id"]
    done = _wait_complete(server, f"{JOBS_PATH}/{server.job_id}", timeout)
    attributes = done["data"]["attributes"]
    if attributes["completed_count"] != len(ids) or attributes["failed_count"]:
        raise RuntimeError(f"{server.label}: the seeding job did not apply: {attributes}")


def _call(server: Peer, method: str, path: str, body: bytes | None, expected: int) -> Any:
    status, answer = request(server.port, method, path, body,
                             headers(server.key, post=body is not None))  # fmt: skip
    if status != expected:
        raise RuntimeError(f"{server.label}: {method} {path} answered {status}: {answer[:500]!r}")
    return orjson.loads(answer)


def _wait_complete(server: Peer, path: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        document = _call(server, "GET", path, None, 200)
        if document["data"]["attributes"]["status"] == "complete":
            return document
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.label}: {path} not complete after {timeout} s")
        time.sleep(0.05)


def job_counts(server: Peer) -> dict[str, int]:
    """Backstock's jobs by status (how far its worker is behind the spawn rounds)."""
    assert server.db_url is not None
    query = "SELECT status, count(*) FROM jobs GROUP BY status"
    if server.db_url.startswith("sqlite:///"):
        import sqlite3

        with contextlib.closing(sqlite3.connect(server.db_url.removeprefix("sqlite:///"))) as c:
            c.execute("PRAGMA busy_timeout=10000")
            return {status: int(n) for status, n in c.execute(query)}
    with psycopg.connect(server.db_url, autocommit=True) as conn:
        return {status: int(n) for status, n in conn.execute(query).fetchall()}


def stand_in_for_autovacuum(server: Peer) -> bool:
    """``VACUUM`` a Backstock's PostgreSQL database if the server runs with autovacuum off (as
    this machine's does: ``/etc/postgresql/15/main/conf.d/90-ci.conf``), standing in for the
    autovacuum every production server runs (docs/deploy.md): the same 100 variants updated
    job after job leave dead row versions that a later lookup wades through, and the rounds
    got slower one after the other (PostgreSQL's CPU a POST 0.9 -> 3.6 ms over six rounds
    of ``bench.ab``; one ``VACUUM``, 0.5 s, took it back to 1.4). Called before a server's
    turn, outside any measured run; True if it vacuumed."""
    if server.db_url is None or not autovacuum_is_off(server.db_url):
        return False
    with psycopg.connect(server.db_url, autocommit=True) as conn:
        conn.execute("VACUUM")
    return True


def backend_pids(pg_admin: str, db_name: str) -> list[int]:
    """The PostgreSQL backends serving ``db_name`` (their CPU is the database's share)."""
    with psycopg.connect(pg_admin, autocommit=True) as admin:
        rows = admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s",
                             (db_name,)).fetchall()  # fmt: skip
    return [int(pid) for (pid,) in rows]


def drop_databases(pg_admin: str, names: list[str]) -> None:
    with psycopg.connect(pg_admin, autocommit=True) as admin:
        for name in names:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
