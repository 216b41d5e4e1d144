"""The worker floor: a plain loop that applies the same partial updates as Backstock's worker,
on the same catalog, with ``executemany`` in transactions of 100 and nothing else (no lease,
no existence check, no progress row).

It reads the payloads of the jobs already queued in Backstock's tables before the clock starts
(and decompresses them: Backstock keeps them zstd-compressed), then per job: decode
the payload (orjson), build the parameter rows, BEGIN, one ``executemany`` per run of updates
that set the same attributes, COMMIT.

    python -m bench.floor_worker --db URL --jobs N [--after-pk PK] [--warmup K]

prints one JSON line: updates, seconds, transactions, p50 and p99 of a transaction in ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import psycopg

from backstock.domain.bodies import payload_json
from bench.floor_spawn import sqlite_connect

_JSON = frozenset({"images", "custom_metadata"})
_CACHE: dict[tuple[str, ...], str] = {}


def statement(columns: tuple[str, ...], mark: str) -> str:
    sql = _CACHE.get(columns)
    if sql is None:
        sets = "".join(f"{name} = {mark}, " for name in columns)
        sql = (
            f"UPDATE catalog_variants SET {sets}updated = {mark} "
            f"WHERE account_id = {mark} AND external_id = {mark}"
        )
        _CACHE[columns] = sql
    return sql


def runs(account: int, payload: bytes, now: int) -> list[tuple[tuple[str, ...], list[Any]]]:
    """The job's updates as (columns, parameter rows) for consecutive updates alike."""
    grouped: list[tuple[tuple[str, ...], list[Any]]] = []
    for external, changes, _links in orjson.loads(payload):
        columns = tuple(changes)
        values = [
            orjson.dumps(v).decode() if k in _JSON and v is not None else v
            for k, v in changes.items()
        ]
        row = (*values, now, account, external)
        if grouped and grouped[-1][0] == columns:
            grouped[-1][1].append(row)
        else:
            grouped.append((columns, [row]))
    return grouped


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_worker")
    parser.add_argument("--db", required=True)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--after-pk", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=0)
    args = parser.parse_args(argv)
    query = (
        "SELECT j.account_id, p.payload FROM jobs AS j JOIN job_payloads AS p ON p.job_pk = j.pk "
        f"WHERE j.pk > {args.after_pk:d} ORDER BY j.pk LIMIT {args.jobs:d}"
    )
    apply: Callable[[int, bytes], None]

    if args.db.startswith("sqlite"):
        conn = sqlite_connect(args.db.removeprefix("sqlite:///"))
        jobs = conn.execute(query).fetchall()

        def apply(account: int, payload: bytes) -> None:
            grouped = runs(account, payload, time.time_ns() // 1000)
            conn.execute("BEGIN IMMEDIATE")
            for columns, rows in grouped:
                conn.executemany(statement(columns, "?"), rows)
            conn.execute("COMMIT")

    else:
        pg = psycopg.connect(args.db, autocommit=True)
        jobs = pg.execute(query).fetchall()

        def apply(account: int, payload: bytes) -> None:
            grouped = runs(account, payload, time.time_ns() // 1000)
            with pg.transaction(), pg.cursor() as cursor:
                for columns, rows in grouped:
                    cursor.executemany(statement(columns, "%s"), rows)

    jobs = [(account, payload_json(bytes(payload))) for account, payload in jobs]
    for account, payload in jobs[: args.warmup]:
        apply(account, payload)
    timings = []
    cpu = time.process_time()
    started = time.perf_counter()
    for account, payload in jobs:
        before = time.perf_counter()
        apply(account, payload)
        timings.append(time.perf_counter() - before)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    updates = sum(len(orjson.loads(payload)) for _, payload in jobs)
    timings.sort()
    result = {
        "updates": updates,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "transactions": len(jobs),
        "p50_ms": statistics.median(timings) * 1000,
        "p99_ms": timings[min(len(timings) - 1, int(len(timings) * 0.99))] * 1000,
    }
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
