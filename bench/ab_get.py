"""GET a job at ``-c64``, interleaved: Backstock on PostgreSQL and on SQLite, and, with
``--old SRC``, the ``src`` folder of another checkout on PostgreSQL, in the same run.

    .venv/bin/python -m bench.ab_get [--old /tmp/old/src] [--rounds 3] [--seconds 8]

Each server is one ``backstock serve --no-worker`` process (no worker competes for the cores),
on a 1,000-variant catalog with one queued job. Rounds alternate the servers' order, so drift
hits all alike; each round prints req/s, p99 and CPU per request (the server's, PostgreSQL's),
and the end the medians and the ratios round by round. A worktree for ``--old``:
``git worktree add --detach /tmp/old <commit>``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench import dbs
from bench.payload import JOBS_PATH, api_headers
from bench.procs import Server, free_port, postgres_pids
from bench.wrk import LoadResult, ensure_wrk, write_script
from bench.wrk import run as wrk_run


def server(name: str, db: dbs.Scratch, workdir: Path, pythonpath: str | None) -> Server:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKSTOCK_", "BENCH_"))}
    env |= {
        "BACKSTOCK_DATABASE_URL": db.url,
        "BACKSTOCK_RATE_LIMITS": "off",
        "BACKSTOCK_LOG_LEVEL": "warning",
    }
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    port = free_port()
    command = [sys.executable, "-m", "backstock", "serve", "--port", str(port), "--no-worker"]
    return Server(name, command, env, workdir / f"{name}.log", port)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab_get")
    parser.add_argument("--old", help="another checkout's src folder, run on PostgreSQL too")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--pg", default=dbs.DEFAULT_PG, help="PostgreSQL admin URL [env BENCH_PG]")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="backstock-ab-"))
    wrk = ensure_wrk()
    with (
        dbs.scratch("postgresql", "ab_pg", workdir, args.pg) as pg,
        dbs.scratch("sqlite", "ab_sqlite", workdir, args.pg) as lite,
    ):
        targets = []
        for db in (pg, lite):
            dbs.seed_catalog(db, 1000)
            job = dbs.queue_jobs(db, dbs.job_bodies(db, 1, seed=99))[0]
            headers = api_headers(db.key, post=False)
            script = write_script(workdir / f"{db.kind}.lua", "GET", headers, None, 200, 10**8)
            targets.append((f"{JOBS_PATH}/{job}", script))
        servers = [(server("postgresql", pg, workdir, None), *targets[0])]
        if args.old:
            servers.append((server("postgresql-old", pg, workdir, args.old), *targets[0]))
        servers.append((server("sqlite", lite, workdir, None), *targets[1]))
        results: dict[str, list[LoadResult]] = {s.name: [] for s, _, _ in servers}
        try:
            for s, _, _ in servers:
                s.start()
            for s, path, script in servers:  # warm-up
                wrk_run(wrk, f"http://127.0.0.1:{s.port}{path}", script, 3, args.connections)
            for n in range(args.rounds):
                for s, path, script in servers if n % 2 == 0 else servers[::-1]:
                    url = f"http://127.0.0.1:{s.port}{path}"
                    pids = [s.pid, *s.tree()]
                    got = wrk_run(wrk, url, script, args.seconds, args.connections, pids,
                                  postgres_pids())  # fmt: skip
                    if got.bad or got.socket_errors:
                        raise RuntimeError(f"{s.name}: {got}\n{s.tail()}")
                    results[s.name].append(got)
                    print(
                        f"{s.name:15} round {n}  {got.rps:8,.0f} req/s  p99 {got.p99_ms:6.1f} ms"
                        f"  CPU {got.server_cpu_ms or 0:.3f} ms/req, PostgreSQL's"
                        f" {got.db_cpu_ms or 0:.3f}",
                        flush=True,
                    )
        finally:
            for s, _, _ in servers:
                s.stop()
    medians = {name: statistics.median(r.rps for r in runs) for name, runs in results.items()}
    print("medians, req/s:", ", ".join(f"{name} {rps:,.0f}" for name, rps in medians.items()))
    for n in range(args.rounds):
        line = f"round {n}: postgresql / sqlite {_ratio(results, 'postgresql', 'sqlite', n)}"
        if args.old:
            line += f", postgresql / postgresql-old {_ratio(results, 'postgresql', 'postgresql-old', n)}"  # noqa: E501
        print(line)


def _ratio(results: dict[str, list[LoadResult]], a: str, b: str, n: int) -> str:
    return f"{results[a][n].rps / results[b][n].rps:.2f}x"


if __name__ == "__main__":
    main()
