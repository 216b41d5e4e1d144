"""``python -m bench``: Backstock against its floors, on SQLite and PostgreSQL.

    python -m bench [--quick | --full] [--only NAME ...] [--db sqlite|postgresql|both]

See bench/README.md for what each benchmark and floor measures.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import orjson
import psycopg
from rich.console import Console
from rich.table import Table

from bench import dbs, suite
from bench.payload import bulk_body, external_id, job_updates
from bench.wrk import ensure_wrk, wrk_version

RESULTS = Path(__file__).resolve().parent / "results"


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Backstock against its floors (see bench/README.md)."
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smoke run, about 2 minutes")
    size.add_argument("--full", action="store_true", help="also a 1M-variant catalog")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only these ({', '.join(suite.BENCHMARKS)}, memory); repeat or comma-separate",
    )
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--pg", default=dbs.DEFAULT_PG, help="PostgreSQL admin URL [env BENCH_PG]")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    parser.add_argument(
        "--server-workers",
        type=int,
        default=1,
        help="server processes for Backstock and for every floor (default 1)",
    )
    parser.add_argument("--seconds", type=float, help="length of each measured load run")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    parser.add_argument(
        "--report", type=Path, metavar="JSON", help="print the tables of a saved run and exit"
    )
    return parser.parse_args(argv)


def selected(args: argparse.Namespace) -> list[str]:
    names = [n.strip() for given in args.only for n in given.split(",") if n.strip()]
    names = ["spawn" if n == "memory" else n for n in names]
    unknown = set(names) - set(suite.BENCHMARKS)
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    return [n for n in suite.BENCHMARKS if n in names] if names else list(suite.BENCHMARKS)


def machine(wrk: str, pg_admin: str | None) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "granian": version("granian"),
        "uvicorn": version("uvicorn"),
        "uvloop": _version_or_none("uvloop"),
        "httptools": _version_or_none("httptools"),
        "orjson": version("orjson"),
        "msgspec": version("msgspec"),
        "psycopg": version("psycopg"),
        "sqlalchemy": version("sqlalchemy"),
        "sqlite": sqlite3.sqlite_version,
        "wrk": wrk_version(wrk),
    }
    if pg_admin:
        with psycopg.connect(pg_admin, autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            facts["postgresql"] = row[0] if row else "?"
    return facts


def background_cores(seconds: float = 1.0) -> float:
    """How many cores the machine kept busy over ``seconds`` (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields[:8]) - idle, sum(fields[:8])

    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    return (busy1 - busy0) / max(total1 - total0, 1) * (os.cpu_count() or 1)


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor()


def _version_or_none(name: str) -> str | None:
    try:
        return version(name)
    except Exception:  # noqa: BLE001 - not installed
        return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    mode = suite.MODES["quick" if args.quick else "full" if args.full else "default"]
    if args.seconds:
        mode = suite.Mode(**(vars(mode) | {"seconds": args.seconds}))
    names = selected(args)
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    if "postgresql" in kinds and (why := dbs.check_postgres(args.pg)):
        raise SystemExit(f"PostgreSQL at {args.pg} is not reachable ({why}); use --db sqlite")
    wrk = ensure_wrk()
    facts = machine(wrk, args.pg if "postgresql" in kinds else None)
    busy = background_cores()
    if busy > 0.15:
        suite.console.print(
            f"[yellow]Warning: {busy:.2f} cores were busy before the run started (other "
            "processes); the numbers will be noisier and lower than on an idle machine.[/yellow]"
        )
    workdir = Path(tempfile.mkdtemp(prefix="backstock-bench-"))
    body_file = workdir / "job-body.json"
    rng = random.Random(42)
    body_file.write_bytes(bulk_body(job_updates(rng, [external_id(rng) for _ in range(1000)])))
    body_bytes = body_file.stat().st_size
    ctx = suite.Context(mode, workdir, wrk, args.connections, args.server_workers, args.pg,
                        body_file)  # fmt: skip
    started = time.monotonic()
    suite.console.print(
        f"[bold]Backstock benchmarks[/bold], {mode.name} mode: {', '.join(names)} on "
        f"{', '.join(kinds)}; {args.server_workers} server process(es), wrk 1 thread x "
        f"{args.connections} connections, {mode.seconds:g} s per run; work dir {workdir}"
    )
    try:
        if "ceiling" in names:
            suite.bench_ceiling(ctx)
        for kind in kinds:
            run_engine(ctx, kind, names)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "mode": mode.name,
        "benchmarks": names,
        "databases": kinds,
        "seconds_total": round(time.monotonic() - started, 1),
        "settings": {
            "server_processes": args.server_workers,
            "wrk_threads": 1,
            "connections": args.connections,
            "seconds_per_run": mode.seconds,
            "warmup_seconds": mode.warmup,
            "worker_jobs": mode.worker_jobs,
            "catalog_sizes": list(mode.sizes),
            "e2e_jobs": mode.e2e_jobs,
            "body_bytes": body_bytes,
        },
        "machine": facts
        | {"busy_cores_before": round(busy, 2), "busy_cores_after": round(background_cores(), 2)},
        "rows": [row.as_dict() for row in ctx.rows],
        "ceiling": ctx.ceilings,
        "servers": ctx.servers,
        "raw": ctx.raw,
    }


def run_engine(ctx: suite.Context, kind: str, names: list[str]) -> None:
    if "spawn" in names:
        suite.bench_spawn(ctx, kind)
    if "loading" in names:
        suite.bench_loading(ctx, kind)
    main_needed = {"get", "worker", "e2e"} & set(names)
    if main_needed:
        smallest = min(ctx.mode.sizes)
        with dbs.scratch(kind, "main", ctx.workdir, ctx.pg_admin) as db:
            started = time.monotonic()
            dbs.seed_catalog(db, smallest)
            suite.console.print(
                f"  seeded {smallest:,} variants ({kind}) in {time.monotonic() - started:.1f} s"
            )
            if "get" in names:
                suite.bench_get(ctx, db)
            if "worker" in names:
                suite.bench_worker(ctx, db, smallest)
            if "e2e" in names:
                suite.bench_e2e(ctx, db)
    if {"get", "worker"} & set(names):
        for size in sorted(ctx.mode.sizes)[1:]:
            with dbs.scratch(kind, f"w{size}", ctx.workdir, ctx.pg_admin) as db:
                started = time.monotonic()
                dbs.seed_catalog(db, size)
                suite.console.print(
                    f"  seeded {size:,} variants ({kind}) in {time.monotonic() - started:.1f} s"
                )
                # ``get ?include=variants`` reads the catalog: measured again at 100k (at 1M
                # the seeding, not the reads, would set the run's length).
                if "get" in names and size <= 100_000:
                    suite.bench_get(ctx, db, suite.size_label(size))
                if "worker" in names:
                    suite.bench_worker(ctx, db, size)


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if value >= 1000:
        text = f"{value:,.0f}"
    elif value >= 100:
        text = f"{value:.0f}"
    elif value >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return text + unit


def _ratio(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    style = "red" if ratio >= 3 else "yellow" if ratio >= 1.5 else "green"
    return f"[{style}]{ratio:.2f}x[/{style}]"


def report(results: dict[str, Any]) -> None:
    out = Console(highlight=False, width=max(Console().width, 150))
    facts = results["machine"]
    out.print(
        f"\n[bold]Machine[/bold]: {facts['nproc']} cores ({facts['cpu']}), "
        f"{facts['memory_gb']} GB, Linux {facts['kernel']}; Python {facts['python']}, "
        f"granian {facts['granian']}, uvicorn {facts['uvicorn']} (uvloop "
        f"{facts['uvloop'] or 'absent'}, httptools {facts['httptools'] or 'absent'}), "
        f"SQLite {facts['sqlite']}, PostgreSQL {facts.get('postgresql', '-')}, {facts['wrk']}; "
        f"busy cores before/after the run: {facts['busy_cores_before']}/"
        f"{facts['busy_cores_after']}"
    )
    settings = results["settings"]
    out.print(
        f"[bold]Setup[/bold]: {results['mode']} mode; {settings['server_processes']} server "
        f"process for Backstock and for each floor; wrk 1 thread x {settings['connections']} "
        f"keep-alive connections; {settings['seconds_per_run']:g} s per run after "
        f"{settings['warmup_seconds']:g} s of warm-up; job body {settings['body_bytes']} bytes"
    )
    if results["ceiling"]:
        table = Table(title="Load generator and server ceiling (raw ASGI hello app)")
        for column in ("server", "request", "req/s", "p99 ms", "server CPU ms/req", "wrk CPU",
                       "wrk ceiling req/s"):  # fmt: skip
            table.add_column(column, justify="left" if column in ("server", "request") else "right")
        for c in results["ceiling"]:
            table.add_row(c["server"], c["request"], _num(c["rps"]), _num(c["p99_ms"]),
                          _num(c["server_cpu_ms"]), f"{c['wrk_cpu']:.0%}",
                          _num(c["wrk_ceiling_rps"]))  # fmt: skip
        out.print(table)
    table = Table(title="Backstock vs floor (ratio = how many times worse than the floor)")
    for column in ("benchmark", "db", "metric", "Backstock", "floor", "ratio", "note"):
        justify = "right" if column in ("Backstock", "floor", "ratio") else "left"
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in results["rows"]:
        ratio = row["ratio"]
        table.add_row(
            row["benchmark"], row["database"], row["metric"], _num(row["backstock"]),
            _num(row["floor"]), _ratio(ratio), row["note"],
        )  # fmt: skip
    out.print(table)
    if results["servers"]:
        table = Table(title="Server choice: the same app under granian and uvicorn (req/s)")
        for column in ("app", "granian", "uvicorn", "granian / uvicorn"):
            table.add_column(column, justify="left" if column == "app" else "right")
        hello = {(c["server"], c["request"]): c["rps"] for c in results["ceiling"]}
        pairs = [
            (f"hello {request}", rps, hello.get(("uvicorn", request)))
            for (server, request), rps in hello.items()
            if server == "granian"
        ]
        pairs += [(s["what"], s["granian_rps"], s["uvicorn_rps"]) for s in results["servers"]]
        for what, granian, uvicorn in pairs:
            table.add_row(what, _num(granian), _num(uvicorn),
                          f"{granian / uvicorn:.2f}x" if uvicorn else "-")  # fmt: skip
        out.print(table)
    out.print(f"Total {results['seconds_total']:.0f} s; Backstock at {results.get('git')}.")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    if args.report:
        report(orjson.loads(args.report.read_bytes()))
        return
    results = run(args)
    results["command"] = " ".join([Path(sys.executable).name, "-m", "bench", *sys.argv[1:]])
    results["git"] = _git_revision()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    report(results)
    print(f"Results written to {args.output}")


def _git_revision() -> str | None:
    """HEAD, with ``+dirty`` when src/ has uncommitted changes (what was measured)."""
    here = Path(__file__).parent
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          check=False, cwd=here)  # fmt: skip
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "../src"],
                           capture_output=True, check=False, cwd=here)  # fmt: skip
    revision = head.stdout.decode().strip()
    return f"{revision}+dirty" if revision and dirty.stdout.strip() else revision or None


if __name__ == "__main__":
    main()
