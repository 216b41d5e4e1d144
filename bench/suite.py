"""The benchmarks. Each measures Backstock and its floor in the same run, under the same server,
the same load generator and the same database, and records rows of (Backstock, floor)."""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from bench import dbs
from bench.payload import JOBS_PATH, PREFIX, api_headers, bulk_body, variant_changes
from bench.procs import PYTHON, RssSampler, Server, cpu_seconds, free_port, postgres_pids
from bench.procs import request as http_request
from bench.wrk import LoadResult, write_script
from bench.wrk import run as wrk_run

console = Console(stderr=True, highlight=False)


@dataclass(frozen=True)
class Mode:
    name: str
    seconds: float
    """Length of each measured load run."""
    warmup: float
    latency_seconds: float
    """Length of the one-connection (idle latency) runs."""
    sizes: tuple[int, ...]
    """Catalog sizes of the worker benchmark (and of the get benchmark, up to 100k)."""
    worker_jobs: int
    e2e_jobs: int
    uvicorn: bool
    """Also serve the ceiling app, the spawn floor and Backstock with uvicorn."""


MODES = {
    "quick": Mode("quick", 3, 1, 2, (10_000,), 40, 15, False),
    "default": Mode("default", 8, 2, 3, (10_000, 100_000), 200, 50, True),
    "full": Mode("full", 10, 2, 4, (10_000, 100_000, 1_000_000), 300, 50, True),
}
BENCHMARKS = ("ceiling", "spawn", "get", "worker", "e2e", "loading")
"""``memory`` is measured during ``spawn``; ``--only memory`` runs ``spawn``."""


@dataclass
class Row:
    benchmark: str
    database: str
    metric: str
    backstock: float | None
    floor: float | None
    higher_is_better: bool
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """How many times worse Backstock is than the floor (1.0 = at the floor)."""
        if not self.backstock or not self.floor:
            return None
        if self.higher_is_better:
            return self.floor / self.backstock
        return self.backstock / self.floor

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ratio": self.ratio}


@dataclass
class Context:
    mode: Mode
    workdir: Path
    wrk: str
    connections: int
    server_workers: int
    pg_admin: str
    body_file: Path
    rows: list[Row] = field(default_factory=list)
    ceilings: list[dict[str, Any]] = field(default_factory=list)
    servers: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    floor_c1_ms: dict[str, float] = field(default_factory=dict)
    floor_batch_ms: dict[str, float] = field(default_factory=dict)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        ratio = f"{row.ratio:.2f}x" if row.ratio else "-"
        console.print(
            f"    {row.benchmark} ({row.database}) {row.metric}: Backstock {_fmt(row.backstock)}"
            f"  floor {_fmt(row.floor)}  ratio {ratio}"
        )


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


# ---- servers and load --------------------------------------------------------------------------


def backstock_env(db: dbs.Scratch, ctx: Context, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKSTOCK_", "BENCH_"))}
    return (
        env
        | {
            "BACKSTOCK_DATABASE_URL": db.url,
            "BACKSTOCK_RATE_LIMITS": "off",
            "BACKSTOCK_LOG_LEVEL": "warning",
            "BACKSTOCK_WORKERS": str(ctx.server_workers),
            # The per-account cap of open jobs (500) would refuse the spawn run after 500 jobs
            # (no worker drains them), and its quota of queued bytes (256 MB) after some 7,000.
            # The caps' UPDATE still runs on every request.
            "BACKSTOCK_MAX_JOBS_IN_PROGRESS": "1000000000",
            "BACKSTOCK_MAX_QUEUED_BYTES": str(2**50),
        }
        | extra
    )


def backstock_server(
    ctx: Context, db: dbs.Scratch, name: str, worker: bool = False, server: str = "granian"
) -> Server:
    port = free_port()
    if server == "granian":
        command = [PYTHON, "-m", "backstock", "serve", "--port", str(port)]
        command += [] if worker else ["--no-worker"]
        env = backstock_env(db, ctx)
    else:
        target = "backstock.bootstrap:app_from_environment"
        command = [PYTHON, "-m", "bench.serve", "uvicorn", target, "--port", str(port)]
        command += ["--workers", str(ctx.server_workers)]
        env = backstock_env(db, ctx, BACKSTOCK_RUN_WORKER="true" if worker else "false")
    return Server(name, command, env, ctx.workdir / f"{name}.log", port)


def floor_server(
    ctx: Context, name: str, target: str, db_url: str, server: str = "granian"
) -> Server:
    port = free_port()
    command = [PYTHON, "-m", "bench.serve", server, target, "--port", str(port)]
    command += ["--workers", str(ctx.server_workers)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKSTOCK_", "BENCH_"))}
    env |= {"BENCH_FLOOR_DB": db_url, "BENCH_FLOOR_CONNECTIONS": str(max(ctx.connections, 1))}
    return Server(name, command, env, ctx.workdir / f"{name}.log", port)


def load(
    ctx: Context,
    server: Server,
    label: str,
    path: str,
    expected: int,
    headers: dict[str, str] | None = None,
    post: bool = False,
    connections: int | None = None,
    seconds: float | None = None,
    warmup: bool = True,
    db_cpu: bool = False,
) -> LoadResult:
    """Warm up, then one measured wrk run against ``server``; every response must be
    ``expected`` (else the run is refused)."""
    connections = connections or ctx.connections
    seconds = seconds or ctx.mode.seconds
    budget = int(seconds * 200_000)
    script = write_script(
        ctx.workdir / f"{label}.lua",
        "POST" if post else "GET",
        headers or {},
        ctx.body_file if post else None,
        expected,
        budget,
    )
    url = f"http://127.0.0.1:{server.port}{path}"
    if warmup and ctx.mode.warmup:
        wrk_run(ctx.wrk, url, script, ctx.mode.warmup, connections)
    result = wrk_run(
        ctx.wrk,
        url,
        script,
        seconds,
        connections,
        server_pids=server.tree(),
        db_pids=postgres_pids() if db_cpu else None,
    )
    if result.bad or result.socket_errors:
        raise RuntimeError(
            f"{label}: {result.bad} responses were not {expected} (last {result.last_bad}), "
            f"{result.socket_errors} socket errors\n{server.tail()}"
        )
    ctx.raw[label] = result.as_dict()
    console.print(
        f"  {label}: {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, p99 "
        f"{result.p99_ms:.2f} ms, server CPU {result.server_cpu_ms or 0:.2f} ms/req, "
        f"wrk CPU {result.wrk_cpu:.0%}"
    )
    return result


def check(
    server: Server, method: str, path: str, expected: int, headers: dict[str, str], body: bytes
) -> bytes:
    status, answer = http_request(server.port, method, path, body or None, headers)
    if status != expected:
        raise RuntimeError(
            f"{server.name}: {method} {path} answered {status}, not {expected}: {answer[:500]!r}"
        )
    return answer


@contextlib.contextmanager
def serving(server: Server) -> Iterator[Server]:
    console.print(f"  starting {server.name} ({' '.join(server.command[2:])})")
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ---- the load generator's ceiling --------------------------------------------------------------


def bench_ceiling(ctx: Context) -> None:
    """A raw hello app: the most this server and this load generator do on this machine."""
    console.rule("ceiling: raw ASGI hello app")
    body = ctx.body_file.read_bytes()
    for server_name in ("granian", "uvicorn") if ctx.mode.uvicorn else ("granian",):
        port_server = floor_server(
            ctx, f"hello-{server_name}", "bench.hello:create", "", server_name
        )
        with serving(port_server) as server:
            check(server, "POST", "/", 202, {}, body)
            for method in ("GET", "POST"):
                label = f"ceiling-{server_name}-{method}"
                result = load(ctx, server, label, "/", 202 if method == "POST" else 200,
                              post=method == "POST")  # fmt: skip
                ctx.ceilings.append({
                    "server": server_name,
                    "request": f"{method} {'~40 KB body' if method == 'POST' else '/'}",
                    "rps": result.rps,
                    "p99_ms": result.p99_ms,
                    "server_cpu_ms": result.server_cpu_ms,
                    "wrk_cpu": result.wrk_cpu,
                    "wrk_ceiling_rps": result.rps / max(result.wrk_cpu, 1e-9),
                })  # fmt: skip


# ---- spawn (and memory) --------------------------------------------------------------------------


def bench_spawn(ctx: Context, kind: str) -> None:
    console.rule(f"spawn ({kind}): POST a 100-variant job")
    body = ctx.body_file.read_bytes()
    pg = kind == "postgresql"
    with dbs.scratch(kind, "spawn", ctx.workdir, ctx.pg_admin) as db:
        floor_db = f"sqlite:///{ctx.workdir / 'floor-spawn.db'}" if kind == "sqlite" else db.url
        headers = api_headers(db.key, post=True)
        measured: dict[str, tuple[LoadResult, RssSampler, LoadResult]] = {}
        servers = {
            "backstock": (backstock_server(ctx, db, f"backstock-spawn-{kind}"), JOBS_PATH),
            "floor": (
                floor_server(ctx, f"floor-spawn-{kind}", "bench.floor_spawn:create", floor_db),
                "/jobs",
            ),
        }
        for who, (server, path) in servers.items():
            with serving(server):
                check(server, "POST", path, 202, headers, body)
                with RssSampler(server.pid) as rss:
                    result = load(ctx, server, f"spawn-{kind}-{who}", path, 202, headers,
                                  post=True, db_cpu=pg)  # fmt: skip
                idle = load(ctx, server, f"spawn-{kind}-{who}-1conn", path, 202, headers,
                            post=True, connections=1, seconds=ctx.mode.latency_seconds,
                            warmup=False)  # fmt: skip
                measured[who] = (result, rss, idle)
        (b, b_rss, b1), (f, f_rss, f1) = measured["backstock"], measured["floor"]
        ctx.floor_c1_ms[kind] = f1.p50_ms
        ctx.add(Row("spawn", kind, "jobs/s", b.rps, f.rps, True))
        ctx.add(Row("spawn", kind, "p50 ms", b.p50_ms, f.p50_ms, False))
        ctx.add(Row("spawn", kind, "p99 ms", b.p99_ms, f.p99_ms, False))
        ctx.add(Row("spawn", kind, "server CPU ms/job", b.server_cpu_ms, f.server_cpu_ms, False))
        if pg:
            ctx.add(Row("spawn", kind, "PostgreSQL CPU ms/job", b.db_cpu_ms, f.db_cpu_ms, False))
        ctx.add(Row("spawn, 1 connection", kind, "p50 ms", b1.p50_ms, f1.p50_ms, False))
        mb = 2**20
        ctx.add(
            Row(
                "memory (under spawn)",
                kind,
                "peak PSS MB",
                b_rss.peak_pss / mb,
                f_rss.peak_pss / mb,
                False,
                "server processes, shared pages once",
            )
        )
        each = " + ".join(f"{n / mb:.0f}" for n in b_rss.per_process)
        floor_each = " + ".join(f"{n / mb:.0f}" for n in f_rss.per_process)
        ctx.add(Row("memory (under spawn)", kind, "peak RSS MB", b_rss.peak / mb, f_rss.peak / mb,
                    False, f"supervisor + worker: {each} vs {floor_each}"))  # fmt: skip
        if ctx.mode.uvicorn:
            bench_spawn_uvicorn(ctx, kind, db, floor_db, b.rps, f.rps)
    Path(floor_db.removeprefix("sqlite:///")).unlink(missing_ok=True)


def bench_spawn_uvicorn(
    ctx: Context, kind: str, db: dbs.Scratch, floor_db: str, b_granian: float, f_granian: float
) -> None:
    body = ctx.body_file.read_bytes()
    headers = api_headers(db.key, post=True)
    b_server = backstock_server(ctx, db, f"backstock-spawn-{kind}-uvicorn", server="uvicorn")
    f_server = floor_server(ctx, f"floor-spawn-{kind}-uvicorn", "bench.floor_spawn:create",
                            floor_db, "uvicorn")  # fmt: skip
    rps: dict[str, float] = {}
    for who, server, path in (("backstock", b_server, JOBS_PATH), ("floor", f_server, "/jobs")):
        with serving(server):
            check(server, "POST", path, 202, headers, body)
            rps[who] = load(ctx, server, f"spawn-{kind}-{who}-uvicorn", path, 202, headers,
                            post=True).rps  # fmt: skip
    ctx.add(Row("spawn, uvicorn", kind, "jobs/s", rps["backstock"], rps["floor"], True))
    ctx.servers.append({"what": f"Backstock spawn ({kind})", "granian_rps": b_granian,
                        "uvicorn_rps": rps["backstock"]})  # fmt: skip
    ctx.servers.append({"what": f"spawn floor ({kind})", "granian_rps": f_granian,
                        "uvicorn_rps": rps["floor"]})  # fmt: skip


# ---- get ---------------------------------------------------------------------------------------


def bench_get(ctx: Context, db: dbs.Scratch, catalog: str = "") -> None:
    """``catalog`` names the catalog size in the rows of every size but the smallest."""
    kind = db.kind
    console.rule(f"get ({kind}): GET a job, without and with include=variants {catalog}")
    job_id = dbs.queue_jobs(db, dbs.job_bodies(db, 1, seed=99))[0]
    headers = api_headers(db.key, post=False)
    b_server = backstock_server(ctx, db, f"backstock-get-{kind}")
    f_server = floor_server(ctx, f"floor-get-{kind}", "bench.floor_get:create", db.url)
    paths = {
        "backstock": (b_server, f"{JOBS_PATH}/{job_id}"),
        "floor": (f_server, f"/jobs/{job_id}"),
    }
    measured: dict[tuple[str, str], tuple[LoadResult, int]] = {}
    for who, (server, path) in paths.items():
        with serving(server):
            for variant, suffix in (("job", ""), ("include", "?include=variants")):
                answer = check(server, "GET", path + suffix, 200, headers, b"")
                if variant == "include":
                    included = len(orjson.loads(answer).get("included", []))
                    assert included == 100, f"{who} included {included} variants, not 100"
                result = load(ctx, server, f"get-{kind}-{variant}-{who}", path + suffix, 200,
                              headers, db_cpu=kind == "postgresql")  # fmt: skip
                measured[variant, who] = (result, len(answer))
    suffix = f", {catalog} variants" if catalog else ""
    for variant, base in (("job", "get job"), ("include", "get job ?include=variants")):
        name = base + suffix
        (b, b_size), (f, f_size) = measured[variant, "backstock"], measured[variant, "floor"]
        note = f"body {b_size / 1000:.1f} KB vs {f_size / 1000:.1f} KB"
        ctx.add(Row(name, kind, "req/s", b.rps, f.rps, True, note))
        ctx.add(Row(name, kind, "p99 ms", b.p99_ms, f.p99_ms, False))
        ctx.add(Row(name, kind, "server CPU ms/req", b.server_cpu_ms, f.server_cpu_ms, False))


# ---- worker ------------------------------------------------------------------------------------


def run_floor_worker(db: dbs.Scratch, jobs: int, after_pk: int, warmup: int) -> dict[str, Any]:
    command = [PYTHON, "-m", "bench.floor_worker", "--db", db.url, "--jobs", str(jobs),
               "--after-pk", str(after_pk), "--warmup", str(warmup)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"floor worker failed:\n{done.stderr.decode()[-3000:]}")
    result: dict[str, Any] = orjson.loads(done.stdout.splitlines()[-1])
    return result


def run_backstock_worker(
    ctx: Context, db: dbs.Scratch, job_ids: list[str], after_pk: int, name: str
) -> dict[str, Any]:
    """``backstock worker`` on the queued jobs; the rate between the first and the last
    completion (``completed_at``), so the process's start-up is not counted."""
    env = backstock_env(db, ctx)
    log = ctx.workdir / f"{name}.log"
    count_sql = f"SELECT count(*) FROM jobs WHERE pk > {after_pk:d} AND status = 'complete'"
    deadline = time.monotonic() + max(120.0, len(job_ids) * 2.0)
    samples: list[tuple[float, float, int]] = []
    conn = db.connect()
    with log.open("wb") as out:
        process = subprocess.Popen([PYTHON, "-m", "backstock", "worker"], env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        while True:
            done = int(conn.execute(count_sql).fetchone()[0])
            samples.append((time.monotonic(), cpu_seconds([process.pid]), done))
            if done >= len(job_ids):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker stopped at {done}/{len(job_ids)} jobs:\n"
                                   + log.read_text()[-3000:])  # fmt: skip
            time.sleep(0.05)
        rows = conn.execute(
            f"SELECT completed_at, completed_count, failed_count FROM jobs WHERE pk > {after_pk:d} "
            "ORDER BY completed_at"
        ).fetchall()
    finally:
        conn.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
    failed = sum(row[2] for row in rows)
    if failed:
        raise RuntimeError(f"{failed} updates failed (variants missing?)")
    span = (rows[-1][0] - rows[0][0]) / 1e6
    updates = sum(row[1] for row in rows[1:])
    first = next(s for s in samples if s[2] >= 1)
    last = samples[-1]
    cpu_per_100 = (last[1] - first[1]) / max(last[2] - first[2], 1) * 1000
    return {"updates_per_s": updates / span, "cpu_ms_per_100": cpu_per_100, "span_s": span}


def size_label(size: int) -> str:
    return f"{size // 1000}k" if size < 1_000_000 else f"{size // 1_000_000}M"


def bench_worker(ctx: Context, db: dbs.Scratch, size: int) -> None:
    kind = db.kind
    label = size_label(size)
    console.rule(f"worker ({kind}): {ctx.mode.worker_jobs} jobs of 100 updates, {label} catalog")
    jobs = ctx.mode.worker_jobs
    after_pk = dbs.max_job_pk(db)
    started = time.monotonic()
    job_ids = dbs.queue_jobs(db, dbs.job_bodies(db, jobs, seed=size))
    console.print(f"  queued {jobs} jobs in {time.monotonic() - started:.1f} s")
    floor = run_floor_worker(db, jobs, after_pk, warmup=min(10, jobs // 4))
    floor_rate = floor["updates"] / floor["seconds"]
    console.print(f"  floor: {floor_rate:,.0f} updates/s, transaction p50 {floor['p50_ms']:.2f} ms")
    backstock = run_backstock_worker(ctx, db, job_ids, after_pk, f"worker-{kind}-{label}")
    console.print(f"  backstock: {backstock['updates_per_s']:,.0f} updates/s")
    ctx.raw[f"worker-{kind}-{label}"] = {"floor": floor, "backstock": backstock}
    if size == min(ctx.mode.sizes):
        ctx.floor_batch_ms[kind] = floor["p50_ms"]
    name = f"worker, {label} variants"
    ctx.add(Row(name, kind, "updates/s", backstock["updates_per_s"], floor_rate, True))
    ctx.add(Row(name, kind, "worker CPU ms/100 updates", backstock["cpu_ms_per_100"],
                floor["cpu_seconds"] / floor["transactions"] * 1000, False))  # fmt: skip


# ---- end to end --------------------------------------------------------------------------------


def _wait_idle(db: dbs.Scratch, timeout: float = 120.0) -> None:
    conn = db.connect()
    try:
        deadline = time.monotonic() + timeout
        open_sql = "SELECT count(*) FROM jobs WHERE status IN ('queued', 'processing')"
        while int(conn.execute(open_sql).fetchone()[0]):
            if time.monotonic() > deadline:
                raise RuntimeError("the service did not drain its queue")
            time.sleep(0.05)
    finally:
        conn.close()


def _floor_parts(ctx: Context, db: dbs.Scratch) -> None:
    """The two floors end to end is made of, when spawn or worker did not run before."""
    kind = db.kind
    if kind not in ctx.floor_c1_ms:
        floor_db = f"sqlite:///{ctx.workdir / 'floor-e2e.db'}" if kind == "sqlite" else db.url
        server = floor_server(ctx, f"floor-spawn-{kind}-e2e", "bench.floor_spawn:create", floor_db)
        with serving(server):
            ctx.floor_c1_ms[kind] = load(ctx, server, f"spawn-{kind}-floor-1conn", "/jobs", 202,
                                         {}, post=True, connections=1,
                                         seconds=ctx.mode.latency_seconds).p50_ms  # fmt: skip
    if kind not in ctx.floor_batch_ms:
        after = dbs.max_job_pk(db)
        dbs.queue_jobs(db, dbs.job_bodies(db, 20, seed=5))
        ctx.floor_batch_ms[kind] = run_floor_worker(db, 20, after, warmup=5)["p50_ms"]


def bench_e2e(ctx: Context, db: dbs.Scratch) -> None:
    kind = db.kind
    count = ctx.mode.e2e_jobs
    console.rule(f"end to end ({kind}): 202 -> complete, {count} jobs one at a time")
    _floor_parts(ctx, db)
    bodies = dbs.job_bodies(db, count + 3, seed=7)
    server = backstock_server(ctx, db, f"backstock-e2e-{kind}", worker=True)
    headers = api_headers(db.key, post=True)
    accepted: list[float] = []
    total: list[float] = []
    with serving(server):
        _wait_idle(db)
        client = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn = db.connect()
        status_sql = f"SELECT status FROM jobs WHERE id = {db.mark}"
        try:
            for n, body in enumerate(bodies):
                time.sleep(0.05)  # idle service: the worker is asleep, waiting for a job
                started = time.perf_counter()
                client.request("POST", JOBS_PATH, body=body, headers=headers)
                response = client.getresponse()
                answer = response.read()
                got = time.perf_counter()
                if response.status != 202:
                    raise RuntimeError(f"e2e POST answered {response.status}: {answer[:300]!r}")
                job_id = orjson.loads(answer)["data"]["id"]
                while conn.execute(status_sql, (job_id,)).fetchone()[0] != "complete":
                    if time.perf_counter() - started > 30:
                        raise RuntimeError(f"job {job_id} not complete after 30 s")
                    time.sleep(0.001)
                finished = time.perf_counter()
                if n >= 3:  # the first three warm the process up
                    accepted.append((got - started) * 1000)
                    total.append((finished - started) * 1000)
        finally:
            client.close()
            conn.close()
    floor_total = ctx.floor_c1_ms[kind] + ctx.floor_batch_ms[kind]
    ctx.raw[f"e2e-{kind}"] = {"accepted_ms": accepted, "total_ms": total,
                              "floor_spawn_p50_ms": ctx.floor_c1_ms[kind],
                              "floor_batch_p50_ms": ctx.floor_batch_ms[kind]}  # fmt: skip
    note = "floor = spawn floor p50 (1 conn) + worker floor transaction p50"
    ctx.add(Row("end to end", kind, "p50 ms", statistics.median(total), floor_total, False, note))
    ctx.add(Row("end to end", kind, "p90 ms", _percentile(total, 0.9), None, False))
    ctx.add(Row("end to end: 202 part", kind, "p50 ms", statistics.median(accepted),
                ctx.floor_c1_ms[kind], False))  # fmt: skip
    wait = [t - a for t, a in zip(total, accepted, strict=True)]
    ctx.add(Row("end to end: after 202", kind, "p50 ms", statistics.median(wait),
                ctx.floor_batch_ms[kind], False, "wake-up, claim, batch, commit"))  # fmt: skip


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


# ---- loading a catalog from nothing --------------------------------------------------------------

LOAD_VARIANTS = 10_000
CREATE_PATH = "/api/catalog-variant-bulk-create-jobs"


def _create_body(externals: list[str], item: str) -> bytes:
    rng = random.Random(len(externals))
    entries = []
    for external in externals:
        attributes = variant_changes(rng, external) | {
            "external_id": external, "description": "d", "inventory_policy": 1,
        }  # fmt: skip
        entries.append({
            "type": "catalog-variant", "attributes": attributes,
            "relationships": {"item": {"data": {"type": "catalog-item", "id": PREFIX + item}}},
        })  # fmt: skip
    body = {"data": {"type": "catalog-variant-bulk-create-job",
                     "attributes": {"variants": {"data": entries}}}}  # fmt: skip
    return orjson.dumps(body)


def _limiter_seconds(jobs: int, limits: str) -> float:
    """The least time a limiter of ``limits`` (``75/second;700/minute``) lets ``jobs`` requests
    through: whole windows, each admitting at most its amount."""
    bound = 0.0
    for part in limits.split(";"):
        amount, _, per = part.partition("/")
        window = {"second": 1.0, "minute": 60.0, "hour": 3600.0}[per.strip()]
        bound = max(bound, ((jobs - 1) // int(amount)) * window)
    return bound


def bench_loading(ctx: Context, kind: str) -> None:
    """10,000 variants from nothing through bulk create jobs of 100, at the default limits,
    against what the limiter alone allows; and a create job's cost against an update job's."""
    from backstock.domain.jobs import KINDS
    from backstock.http.routes import operations
    from backstock.services.limits import Limiter
    from backstock.settings import Settings

    console.rule(f"loading ({kind}): {LOAD_VARIANTS:,} variants from nothing, default limits")
    with dbs.scratch(kind, "load", ctx.workdir, ctx.pg_admin) as db:
        port = free_port()
        env = backstock_env(db, ctx) | {"BACKSTOCK_RATE_LIMITS": "on"}
        for name in ("BACKSTOCK_MAX_JOBS_IN_PROGRESS", "BACKSTOCK_MAX_QUEUED_BYTES"):
            env.pop(name)  # the defaults: this is a user's load
        server = Server(f"backstock-load-{kind}", [PYTHON, "-m", "backstock", "serve", "--port",
                        str(port)], env, ctx.workdir / f"load-{kind}.log", port)  # fmt: skip
        headers = api_headers(db.key, post=True)
        item = {
            "data": {
                "type": "catalog-item",
                "attributes": {
                    "external_id": "ITEM",
                    "title": "t",
                    "description": "d",
                    "url": "https://s/i",
                },
            }
        }
        externals = [f"L{n:06d}" for n in range(LOAD_VARIANTS)]
        bodies = [
            _create_body(externals[n : n + 100], "ITEM") for n in range(0, len(externals), 100)
        ]
        waited = 0.0
        with serving(server):
            check(server, "POST", "/api/catalog-items", 201, headers, orjson.dumps(item))
            client = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            started = time.monotonic()
            job_ids: list[str] = []
            for body in bodies:  # as a client would: each job once, after any Retry-After
                while True:
                    client.request("POST", CREATE_PATH, body=body, headers=headers)
                    response = client.getresponse()
                    answer = response.read()
                    if response.status == 202:
                        job_ids.append(orjson.loads(answer)["data"]["id"])
                        break
                    if response.status != 429:
                        raise RuntimeError(f"loading: {response.status} {answer[:300]!r}")
                    pause = float(response.getheader("Retry-After") or 1)
                    waited += pause
                    time.sleep(pause)
            client.close()
            accepted = time.monotonic() - started
            conn = db.connect()
            done_sql = (
                "SELECT count(*) FROM jobs WHERE kind = 'catalog-variant-bulk-create-job' "
                "AND status = 'complete'"
            )
            try:
                while int(conn.execute(done_sql).fetchone()[0]) < len(job_ids):
                    if time.monotonic() - started > 600:
                        raise RuntimeError("loading: the jobs did not complete")
                    time.sleep(0.02)
                total = time.monotonic() - started
                created = int(conn.execute("SELECT count(*) FROM catalog_variants").fetchone()[0])
            finally:
                conn.close()
        if created != LOAD_VARIANTS:
            raise RuntimeError(f"loading: {created} variants, not {LOAD_VARIANTS}")
        [op] = [op for op in operations() if op.id == "bulk_create_catalog_variants"]
        limits = Limiter(Settings(database_url=db.url)).limits(op.id, op.scope, op.limits)
        floor = _limiter_seconds(len(bodies), limits)
        console.print(
            f"  {len(bodies)} jobs accepted in {accepted:.1f} s, all applied in {total:.1f} s; "
            f"the limiter ({limits}) alone allows {floor:.1f} s"
        )
        ctx.raw[f"loading-{kind}"] = {
            "accepted_s": accepted, "total_s": total, "limits": limits,
            "limiter_floor_s": floor, "throttled_wait_s": waited,
        }  # fmt: skip
        ctx.add(Row("loading 10k variants", kind, "seconds to all applied", total,
                    max(floor, 0.001), False, f"limits {limits}"))  # fmt: skip
        # A create job of 100 against an update job of 100, applied by the same worker code.
        per_job = _job_costs(db, KINDS)
        ctx.raw[f"loading-{kind}"] |= per_job
        ctx.add(Row("create vs update job of 100", kind, "worker ms/job (create; floor: update)",
                    per_job["create_ms"], per_job["update_ms"], False))  # fmt: skip


def _job_costs(db: dbs.Scratch, kinds: Any, jobs: int = 40) -> dict[str, float]:
    """Milliseconds per job of ``jobs`` variant create jobs, then as many update jobs of the
    same variants, each drained by the worker's own claim (one job per transaction)."""
    from backstock.bootstrap import build_services, run

    services = build_services(db.settings())
    rng = random.Random(9)
    externals = [f"C{n:06d}" for n in range(jobs * 100)]
    creates = [_create_body(externals[n : n + 100], "ITEM") for n in range(0, len(externals), 100)]
    updates = [
        bulk_body([(e, variant_changes(rng, e)) for e in externals[n : n + 100]])
        for n in range(0, len(externals), 100)
    ]

    async def measure(kind: str, bodies: list[bytes]) -> float:
        who = await dbs.principal(services, db.key)
        for body in bodies:
            await services.jobs.spawn(who, kinds[kind], body)
        started = time.perf_counter()
        while await services.jobs.claim_many("bench", items=1):
            pass
        return (time.perf_counter() - started) / len(bodies) * 1000

    try:
        create_ms = run(services, lambda: measure("catalog-variant-bulk-create-job", creates))
        update_ms = run(services, lambda: measure("catalog-variant-bulk-update-job", updates))
    finally:
        services.close()
    return {"create_ms": create_ms, "update_ms": update_ms}
