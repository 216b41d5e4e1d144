"""``python -m bench.peers`` (``make bench-peers``): Backstock against the stateless mocks people
run today to fake Klaviyo, WireMock and Prism, in one interleaved run on the same machine, with
the same load generator, body and headers. See bench/peers/README.md.

    python -m bench.peers [--quick] [--rounds N] [--seconds S] [--db sqlite|postgresql|both]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from bench.__main__ import _git_revision, background_cores, machine
from bench.dbs import DEFAULT_PG, check_postgres
from bench.peers import report
from bench.peers import servers as peers
from bench.peers.body import JOBS_PATH, headers, update_body, variant_ids
from bench.procs import RssSampler
from bench.wrk import ensure_wrk, write_script
from bench.wrk import run as wrk_run

RESULTS = Path(__file__).resolve().parents[1] / "results"
OPERATIONS = {"spawn": ("POST", 202), "get": ("GET", 200)}
"""``spawn``: POST the 100-variant bulk update; ``get``: GET one job (``{JOBS_PATH}/{id}``)."""


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers",
        description="Backstock against WireMock and Prism, interleaved (see bench/README.md).",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round x 3 s")
    parser.add_argument("--rounds", type=int, help="measured rounds (default 3; quick 1)")
    parser.add_argument("--seconds", type=float, help="length of each run (default 10; quick 3)")
    parser.add_argument(
        "--warmup", type=float, help="warm-up of each operation, per server (default 3; quick 1)"
    )
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--processes", type=int, default=2, help="Backstock's N processes (2)")
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--pg", default=DEFAULT_PG, help="PostgreSQL admin URL [env BENCH_PG]")
    parser.add_argument("--cache", type=Path, default=peers.CACHE, help="npm install directory")
    parser.add_argument("--output", type=Path, help="JSON (default bench/results/peers-*.json)")
    parser.add_argument("--report", type=Path, metavar="JSON", help="print a saved run and exit")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (3.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0)
    return args


@dataclass
class Bench:
    args: argparse.Namespace
    workdir: Path
    wrk: str
    body_file: Path
    runs: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    vacuums: int = 0
    """Backstock PostgreSQL databases vacuumed before a turn (``stand_in_for_autovacuum``)."""

    def script(self, server: peers.Peer, op: str) -> Path:
        method, expected = OPERATIONS[op]
        return write_script(
            self.workdir / f"{server.name}-{op}.lua", method,
            headers(server.key, post=method == "POST"),
            self.body_file if method == "POST" else None, expected,
            int(max(self.args.seconds, self.args.warmup) * 200_000),
        )  # fmt: skip

    def load(self, server: peers.Peer, op: str, seconds: float, round_no: int | None) -> None:
        """One wrk run; measured (``round_no``) or warm-up (``None``); a refused or failed
        response fails the whole run (after the report)."""
        path = JOBS_PATH if op == "spawn" else f"{JOBS_PATH}/{server.job_id}"
        url = f"http://127.0.0.1:{server.port}{path}"
        db_pids = peers.backend_pids(self.args.pg, server.db_name) if server.db_name else None
        load_before = os.getloadavg()[0]
        backstock = server.family == "backstock"
        jobs_before = peers.job_counts(server) if backstock else {}
        with RssSampler(server.pid) as memory:
            result = wrk_run(self.wrk, url, self.script(server, op), seconds,
                             self.args.connections, server.tree(), db_pids)  # fmt: skip
        jobs_after = peers.job_counts(server) if backstock else {}
        applied = jobs_after.get("complete", 0) - jobs_before.get("complete", 0)
        still_open = sum(n for status, n in jobs_after.items() if status != "complete")
        run = {
            "server": server.name, "label": server.label, "family": server.family,
            "operation": op, "round": round_no, "loadavg_1m_before": load_before,
            **result.as_dict(),
            "response_bytes": result.mb_per_s * 1e6 / result.rps if result.rps else None,
            "rss_peak_bytes": memory.peak, "pss_peak_bytes": memory.peak_pss,
            "rss_per_process": memory.per_process,
            # Backstock: jobs its worker completed during the run, and those left open after it.
            "jobs_applied_per_s": applied / result.seconds if backstock else None,
            "jobs_open_after": still_open if backstock else None,
        }  # fmt: skip
        self.runs.append(run)
        what = "warm-up" if round_no is None else f"round {round_no + 1}"
        report.progress(run, what)
        if result.bad or result.socket_errors:
            self.failures.append(
                f"{server.label} {op} ({what}): {result.bad} unexpected statuses (last "
                f"{result.last_bad}), {result.socket_errors} socket errors"
            )


def run(args: argparse.Namespace) -> dict[str, Any]:
    started, started_at = time.monotonic(), datetime.now().astimezone()
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    if "postgresql" in kinds and (why := check_postgres(args.pg)):
        raise SystemExit(f"PostgreSQL at {args.pg} is not reachable ({why}); use --db sqlite")
    java = shutil.which("java") or "/usr/bin/java"
    if not Path(java).exists():
        raise SystemExit("Java is not installed (WireMock runs on it): apt-get install a JRE 11+")
    versions = peers.install(args.cache)
    wrk = ensure_wrk()
    facts = machine(wrk, args.pg if "postgresql" in kinds else None) | {
        "java": peers.java_version(java),
        "node": _output(["node", "--version"]),
        "wiremock": versions["wiremock"],
        "prism": versions["@stoplight/prism-cli"],
        "loadavg_start": [round(v, 2) for v in os.getloadavg()],
        "busy_cores_start": round(background_cores(), 2),
    }
    report.console.print(
        f"[bold]bench-peers[/bold]: load average at start {report.loadavg(facts['loadavg_start'])}"
        f", {facts['busy_cores_start']} cores busy before the run ({facts['nproc']} cores)"
    )
    workdir = Path(tempfile.mkdtemp(prefix="backstock-peers-"))
    body_file = workdir / "bulk-update-100.json"
    body_file.write_bytes(update_body(variant_ids()))
    body_bytes = body_file.stat().st_size
    bench = Bench(args, workdir, wrk, body_file)
    databases: list[str] = []
    try:
        with started_servers(args, workdir, java, kinds, databases) as servers:
            interleave(bench, servers)
            backlog = {s.name: peers.job_counts(s) for s in servers if s.family == "backstock"}
    finally:
        if databases:
            peers.drop_databases(args.pg, databases)
        shutil.rmtree(workdir, ignore_errors=True)
    facts |= {
        "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        "busy_cores_end": round(background_cores(), 2),
    }
    return {
        "command": " ".join(["python", "-m", "bench.peers", *sys.argv[1:]]),
        "git": _git_revision(),
        "started_at": started_at.isoformat(timespec="seconds"),
        "seconds_total": round(time.monotonic() - started, 1),
        "settings": {
            "rounds": args.rounds,
            "seconds_per_run": args.seconds,
            "warmup_seconds_per_operation": args.warmup,
            "connections": args.connections,
            "wrk_threads": 1,
            "backstock_processes": [1, args.processes],
            "databases": kinds,
            "body_bytes": body_bytes,
            "wiremock_flags": list(peers.WIREMOCK_FLAGS),
            "prism_flags": list(peers.PRISM_FLAGS),
            "vacuums_standing_in_for_autovacuum": bench.vacuums,
            "backstock_env": {
                k: v
                for k, v in peers.backstock_env("").items()
                if k.startswith("BACKSTOCK_") and k != "BACKSTOCK_DATABASE_URL"
            },
        },
        "machine": facts,
        "summary": report.summarise(bench.runs),
        "backstock_jobs_at_end": backlog,
        "failures": bench.failures,
        "runs": bench.runs,
    }


@contextlib.contextmanager
def started_servers(
    args: argparse.Namespace, workdir: Path, java: str, kinds: list[str], databases: list[str]
) -> Iterator[list[peers.Peer]]:
    """Every server, started, seeded (Backstock) and paused; all stopped at the end."""
    planned = [
        peers.backstock(workdir, kind, n, args.pg, databases)
        for kind in kinds
        for n in (1, args.processes)
    ]
    mocks = [peers.wiremock(workdir, java, args.cache), peers.prism(workdir, args.cache)]
    running: list[peers.Peer] = []

    def start(server: peers.Peer) -> None:
        server.start()
        running.append(server)
        if server.family == "backstock":
            peers.seed(server)
        server.pause()
        report.console.print(f"  started {server.label} (pid {server.pid}, port {server.port})")

    try:
        for server in planned:
            start(server)
        if "sqlite" in kinds:  # the floors read a copy of the first SQLite Backstock's file
            for n in (1, args.processes):
                start(peers.floor(workdir, planned[kinds.index("sqlite") * 2], n))
        for server in mocks:
            start(server)
        yield running
    finally:
        for server in running:
            server.stop()


def interleave(bench: Bench, servers: list[peers.Peer]) -> None:
    """Rounds of (every server x every operation); the servers' order rotates by one each round
    and the operations' order alternates, so no server always runs first or after another's
    spawn load. Each server is warmed up before its first measured round (and vacuumed after,
    where ``stand_in_for_autovacuum`` does) and paused outside its own runs."""
    warmed: set[str] = set()
    for round_no in range(bench.args.rounds):
        shift = round_no % len(servers)
        ops = list(OPERATIONS) if round_no % 2 == 0 else list(reversed(OPERATIONS))
        for server in servers[shift:] + servers[:shift]:
            if server.process is None or server.process.poll() is not None:
                bench.failures.append(f"{server.label} is not running (round {round_no + 1})")
                continue
            if peers.stand_in_for_autovacuum(server):
                bench.vacuums += 1
            server.resume()
            try:
                if server.name not in warmed:
                    for op in OPERATIONS:
                        bench.load(server, op, bench.args.warmup, None)
                    warmed.add(server.name)
                    # the warm-up's dead rows vacuumed too, as before every turn: else the
                    # first round of a PostgreSQL Backstock alone wades through them
                    server.pause()
                    if peers.stand_in_for_autovacuum(server):
                        bench.vacuums += 1
                    server.resume()
                for op in ops:
                    bench.load(server, op, bench.args.seconds, round_no)
            except RuntimeError as exc:
                bench.failures.append(f"{server.label}: {exc}\n{server.tail(10)}")
            finally:
                server.pause()


def _output(command: list[str]) -> str | None:
    with contextlib.suppress(OSError):
        return subprocess.run(command, capture_output=True, check=False).stdout.decode().strip()
    return None


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    if args.report:
        results = orjson.loads(args.report.read_bytes())
        report.print_results(results)
        raise SystemExit(1 if results["failures"] else 0)
    results = run(args)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    output = args.output or RESULTS / f"peers-{stamp}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    report.print_results(results)
    print(f"Results written to {output}")
    if results["failures"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
