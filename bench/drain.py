"""One ``backstock worker`` draining a backlog on PostgreSQL: jobs a second, the worker's and
PostgreSQL's CPU a job, and what the updates did to ``catalog_variants`` (the share of
updates in place, HOT, and its pages).

    .venv/bin/python -m bench.drain [--jobs 1500] [--same-rows] [--pg URL]

The jobs are accepted through Backstock's service, as the API accepts them, on a 1,000-variant
catalog; each updates 100 variants picked at random, or with ``--same-rows`` the same 100 (as
``make bench-peers`` spawns them). The database is vacuumed and its statistics reset before the
worker starts; the time counts from the worker's start (its start-up included). Another
checkout's code: ``PYTHONPATH=/tmp/old/src .venv/bin/python -m bench.drain`` (its first line
says which ``backstock`` ran).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psycopg

import backstock
from bench import dbs
from bench.peers.body import update_body
from bench.peers.servers import backend_pids, backstock_env
from bench.procs import cpu_seconds

_TABLE = """SELECT n_tup_upd, n_tup_hot_upd, pg_relation_size(relid) / 8192
FROM pg_stat_user_tables WHERE relname = 'catalog_variants'"""


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.drain")
    parser.add_argument("--jobs", type=int, default=1500)
    parser.add_argument("--same-rows", action="store_true", help="every job the same 100 variants")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for the drain"
    )
    parser.add_argument("--pg", default=dbs.DEFAULT_PG, help="PostgreSQL admin URL [env BENCH_PG]")
    args = parser.parse_args(argv)
    print(f"backstock from {Path(backstock.__file__).parent}")
    with dbs.scratch("postgresql", "drain", Path(tempfile.mkdtemp()), args.pg) as db:
        db.variant_ids = dbs.seed_catalog(db, 1000)
        same = [update_body(db.variant_ids[:100])] * args.jobs
        bodies = same if args.same_rows else dbs.job_bodies(db, args.jobs, seed=98)
        dbs.queue_jobs(db, bodies, at_once=100)
        with psycopg.connect(db.url, autocommit=True) as conn:
            conn.execute("VACUUM")
            conn.execute("SELECT pg_stat_reset()")
        name = db.url.rsplit("/", 1)[1]
        left = "SELECT count(*) FROM jobs WHERE status IN ('queued', 'processing')"
        with psycopg.connect(db.url, autocommit=True) as conn:
            before = set(backend_pids(args.pg, name))  # this one's: not the worker's
            started = time.monotonic()
            worker = subprocess.Popen([sys.executable, "-m", "backstock", "worker"],
                                      env=backstock_env(db.url), stdout=subprocess.DEVNULL,
                                      stderr=subprocess.STDOUT)  # fmt: skip
            try:
                while conn.execute(left).fetchone()[0]:  # type: ignore[index]
                    if worker.poll() is not None:
                        raise SystemExit(f"the worker exited ({worker.returncode}) with jobs left")
                    if time.monotonic() - started > args.timeout:
                        raise SystemExit(f"jobs still left after {args.timeout} s")
                    time.sleep(0.05)
                took = time.monotonic() - started
                backends = [pid for pid in backend_pids(args.pg, name) if pid not in before]
                db_cpu = cpu_seconds(backends)  # the worker's connections (and the lookup's)
                worker_cpu = cpu_seconds([worker.pid])
            finally:
                worker.terminate()
                worker.wait()
            time.sleep(0.6)  # the statistics reach pg_stat_user_tables within 500 ms
            updates, hot, pages = conn.execute(_TABLE).fetchone()  # type: ignore[misc]
        jobs = args.jobs
        print(f"{jobs} jobs{' of the same 100 variants' if args.same_rows else ''}: "
              f"{jobs / took:,.0f} jobs/s; CPU a job: worker {worker_cpu / jobs * 1000:.2f} ms, "
              f"PostgreSQL {db_cpu / jobs * 1000:.2f} ms; {hot / max(updates, 1):.1%} of "
              f"{updates:,} updates HOT; catalog_variants {pages:,} pages")  # fmt: skip


if __name__ == "__main__":
    main()
