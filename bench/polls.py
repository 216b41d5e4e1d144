"""The client's CPU for one statement of polls read together (PostgreSQL,
``storage/jobs.py`` ``polls``, as ``Database.read_together`` runs it under load), for 1, 4, 16
and 32 asks, each finding its job or none: what a batch of GETs costs the API process in
psycopg and the storage layer.

    .venv/bin/python -m bench.polls [--reads 2000] [--pg URL]

Another checkout's code: ``PYTHONPATH=/tmp/old/src .venv/bin/python -m bench.polls`` (the
first line printed says which ``backstock`` ran). Each size: the best of 3 runs of
``--reads`` statements, CPU (user + system of this process) and wall time per statement.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import backstock
from backstock.bootstrap import build_services
from backstock.domain.clock import now_us
from backstock.domain.keys import from_authorization
from backstock.storage import jobs as jobs_store
from bench import dbs

SIZES = (1, 4, 16, 32)
FOUND = ("found", "kept", "none")
"""Each ask finds the job (a row of ~8 KB, its 100 variants' linkage, all but ~500 bytes), or
finds it with its linkage kept by earlier polls (``storage/jobs.py`` ``Linkages``), or asks an
unknown id. One ask alone is read by the one-poll statement, which keeps nothing: its "kept"
is "found"."""
UNKNOWN = "01M91FG84H571EBJKSNR4H15RC"


def linkages(kept: bool) -> tuple[Any, ...]:
    """``polls``' last argument: a ``Linkages`` that keeps or one that keeps nothing (none
    before session 14's code)."""
    if not hasattr(jobs_store, "Linkages"):
        return ()
    return (jobs_store.Linkages() if kept else jobs_store.Linkages(budget=0),)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.polls")
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="asks a statement")
    parser.add_argument("--only", choices=tuple(FOUND), help="one kind of ask only")
    parser.add_argument("--pg", default=dbs.DEFAULT_PG, help="PostgreSQL admin URL [env BENCH_PG]")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    shown = [args.only] if args.only else list(FOUND)
    print(f"backstock from {Path(backstock.__file__).parent}")
    with dbs.scratch("postgresql", "polls", Path(tempfile.mkdtemp()), args.pg) as db:
        db.variant_ids = dbs.seed_catalog(db, 100)
        job = dbs.queue_jobs(db, dbs.job_bodies(db, 1, seed=99))[0]
        services = build_services(db.settings())
        key = from_authorization(f"Klaviyo-API-Key {db.key}")
        store = services.jobs.store

        async def run() -> None:
            for size, found in itertools.product(sizes, shown):
                asks = [(key, dbs.UPDATE_JOB.type, UNKNOWN if found == "none" else job)] * size
                extra = linkages(kept=found == "kept")
                if found == "kept" and not extra:
                    continue  # nothing is kept before session 14

                def read(conn: Any, asks: Any = asks, extra: Any = extra) -> Any:
                    return jobs_store.polls(conn, asks, now_us(), *extra)

                best: tuple[float, float] | None = None
                for _ in range(3):
                    cpu, wall = time.process_time(), time.perf_counter()
                    for _ in range(args.reads):
                        await store.db.read(read)
                    reads = max(args.reads, 1)
                    took = ((time.process_time() - cpu) / reads,
                            (time.perf_counter() - wall) / reads)  # fmt: skip
                    best = took if best is None or took < best else best
                assert best is not None
                cpu_us, wall_us = best[0] * 1e6, best[1] * 1e6
                print(f"{size:3d} asks, {found:5}: {cpu_us:6.0f} µs CPU, {wall_us:6.0f} µs wall a"
                      f" statement ({cpu_us / size:5.1f} µs CPU an ask)")  # fmt: skip

        try:
            asyncio.run(run())
        finally:
            services.close()


if __name__ == "__main__":
    main()
