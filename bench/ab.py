"""A/B at ``-c64``, interleaved: GET a job (``--op get``) or POST the peers' 100-variant bulk
update (``--op post``, ~89 KB), to Backstock on PostgreSQL and on SQLite, and, with ``--old
SRC``, to the ``src`` folder of another checkout on each, in the same run.

    .venv/bin/python -m bench.ab [--op get|post] [--old /tmp/old/src] [--db sqlite|postgresql|both]
                                 [--worker] [--backlog N [--same-rows]] [--rounds 3]
                                 [--seconds 8]

Each server is one ``backstock serve`` (its API processes one per core, as a plain ``serve``
starts them with rate limits off), with no worker unless ``--worker`` (then its worker process
applies what it accepts), on a 1,000-variant catalog with one queued job (and ``--backlog N``
more, each of 100 variants picked at random, or with ``--same-rows`` the same 100, as the
peers' spawn rounds queue them), set up as ``make bench-peers`` sets up its Backstock (rate
limits and the per-account caps off). Rounds alternate the servers' order, so drift hits all
alike; each round prints req/s, p99, CPU per request (the server's, PostgreSQL's) and the jobs
applied a second, and the end the medians and the ratios round by round. A worktree for ``--old``:
``git worktree add --detach /tmp/old <commit>``; its databases are migrated down to its own
last migration when this checkout has later ones.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory

from backstock.storage import migrate
from bench import dbs
from bench.payload import JOBS_PATH, api_headers
from bench.peers.body import update_body
from bench.peers.servers import Peer, backstock_env, job_counts, stand_in_for_autovacuum
from bench.procs import free_port, postgres_pids
from bench.wrk import LoadResult, ensure_wrk, write_script
from bench.wrk import run as wrk_run


def server(name: str, db: dbs.Scratch, workdir: Path, pythonpath: str | None, worker: bool) -> Peer:
    """``make bench-peers``'s Backstock (``backstock_env``: its caps lifted, and leases longer
    than the run, since ``--worker`` pauses the servers not measured)."""
    env = backstock_env(db.url)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    port = free_port()
    command = [sys.executable, "-m", "backstock", "serve", "--port", str(port)]
    command += [] if worker else ["--no-worker"]
    return Peer(name, command, env, workdir / f"{name}.log", port, db_url=db.url)


def schema_of(db: dbs.Scratch, src: Path) -> None:
    """Migrate ``db`` (set up at this checkout's head) down to the last migration of the
    checkout whose ``src`` folder is ``src``, when that one's migrations end earlier: its
    server refuses a schema it does not know. The rows written meanwhile go down with it."""
    folder = src / "backstock" / "storage" / "migrations"
    if not (folder / "versions").is_dir():
        raise SystemExit(f"--old {src}: no backstock/storage/migrations there (give its src)")
    config = migrate.alembic_config(db.url)
    theirs = ScriptDirectory(str(folder)).get_current_head()
    ours = ScriptDirectory.from_config(config)
    if theirs is None or theirs not in {script.revision for script in ours.walk_revisions()}:
        raise SystemExit(f"--old {src}: its last migration {theirs!r} is not one of ours")
    if theirs != ours.get_current_head():
        command.downgrade(config, theirs)


def target(
    db: dbs.Scratch, op: str, workdir: Path, backlog: int, same_rows: bool
) -> tuple[str, Path]:
    """The path to load and the wrk script: GET the job, or POST the 100-variant update; then
    ``backlog`` more jobs queued (a worker busy during the rounds, as in bench-peers), each
    updating 100 variants at random or, with ``same_rows``, the same 100."""
    db.variant_ids = dbs.seed_catalog(db, 1000)
    if backlog:
        same = [update_body(db.variant_ids[:100])] * backlog
        bodies = same if same_rows else dbs.job_bodies(db, backlog, seed=98)
        dbs.queue_jobs(db, bodies, at_once=100)
    if op == "get":
        job = dbs.queue_jobs(db, dbs.job_bodies(db, 1, seed=99))[0]
        script = workdir / f"{db.label}.lua"
        return f"{JOBS_PATH}/{job}", write_script(script, "GET", api_headers(db.key, post=False),
                                                  None, 200, 10**8)  # fmt: skip
    body = workdir / f"{db.label}.json"
    body.write_bytes(update_body(db.variant_ids[:100]))
    headers = api_headers(db.key, post=True)
    return JOBS_PATH, write_script(workdir / f"{db.label}.lua", "POST", headers, body, 202, 10**8)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab")
    parser.add_argument("--op", choices=("get", "post"), default="get")
    parser.add_argument("--old", help="another checkout's src folder, run beside this one")
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--worker", action="store_true", help="each server applies its jobs")
    parser.add_argument("--backlog", type=int, default=0, help="jobs queued before the start")
    parser.add_argument("--same-rows", action="store_true",
                        help="the backlog's jobs all update the same 100 variants")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--pg", default=dbs.DEFAULT_PG, help="PostgreSQL admin URL [env BENCH_PG]")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="backstock-ab-"))
    wrk = ensure_wrk()
    kinds = ["postgresql", "sqlite"] if args.db == "both" else [args.db]
    trees = [("", None)] + ([("-old", args.old)] if args.old else [])
    with contextlib.ExitStack() as stack:
        servers: list[tuple[Peer, str, Path]] = []
        for kind in kinds:
            for suffix, src in trees:  # a database each: one server's rows never slow another
                label = f"ab_{kind}{suffix.replace('-', '_')}"
                db = stack.enter_context(dbs.scratch(kind, label, workdir, args.pg))
                path, script = target(db, args.op, workdir, args.backlog, args.same_rows)
                if src is not None:
                    schema_of(db, Path(src))
                servers.append((server(kind + suffix, db, workdir, src, args.worker), path, script))
        results: dict[str, list[LoadResult]] = {s.name: [] for s, _, _ in servers}
        try:
            for s, _, _ in servers:
                s.start()
            for s, path, script in servers:  # warm-up
                wrk_run(wrk, f"http://127.0.0.1:{s.port}{path}", script, 3, args.connections)
            for n in range(args.rounds):
                for s, path, script in servers if n % 2 == 0 else servers[::-1]:
                    others = [o for o, _, _ in servers if o is not s]
                    if args.worker:  # their workers would compete for the cores
                        for other in others:
                            other.pause()
                    stand_in_for_autovacuum(s)  # on PostgreSQL with autovacuum off
                    done = job_counts(s).get("complete", 0)
                    try:
                        got = wrk_run(wrk, f"http://127.0.0.1:{s.port}{path}", script,
                                      args.seconds, args.connections, [s.pid, *s.tree()],
                                      postgres_pids())  # fmt: skip
                    finally:
                        for other in others:
                            if other.paused:
                                other.resume()
                    applied = (job_counts(s).get("complete", 0) - done) / got.seconds
                    if got.bad or got.socket_errors:
                        raise RuntimeError(f"{s.name}: {got}\n{s.tail()}")
                    results[s.name].append(got)
                    print(
                        f"{s.name:15} round {n}  {got.rps:8,.0f} req/s  p99 {got.p99_ms:6.1f} ms"
                        f"  CPU {got.server_cpu_ms or 0:.3f} ms/req, PostgreSQL's"
                        f" {got.db_cpu_ms or 0:.3f}; jobs applied {applied:,.0f}/s",
                        flush=True,
                    )
        finally:
            for s, _, _ in servers:
                s.stop()
    medians = {name: statistics.median(r.rps for r in runs) for name, runs in results.items()}
    print("medians, req/s:", ", ".join(f"{name} {rps:,.0f}" for name, rps in medians.items()))
    pairs = [(kind, kind + "-old") for kind in kinds if args.old]
    pairs += [("postgresql", "sqlite")] if len(kinds) == 2 else []
    for n in range(args.rounds):
        ratios = (f"{a} / {b} {results[a][n].rps / results[b][n].rps:.2f}x" for a, b in pairs)
        print(f"round {n}: " + ", ".join(ratios))


if __name__ == "__main__":
    main()
