"""``serve``, ``worker`` and ``migrate``."""

from __future__ import annotations

import contextlib
import importlib
import ipaddress
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from backstock import telemetry
from backstock.bootstrap import (
    build_services,
    build_worker,
    migrate_database,
    settle_heap,
    worker_hears_other_processes,
)
from backstock.cli.common import app, caution, err, ready, redact, setting_help, settings_from

Host = Annotated[str | None, typer.Option(help=setting_help("host", "Address to listen on."))]
Port = Annotated[int | None, typer.Option(help=setting_help("port", "Port."))]
Workers = Annotated[
    int | None, typer.Option("--workers", help=setting_help("workers", "API processes."))
]
NoWorker = Annotated[
    bool, typer.Option("--no-worker", help="Run no job worker (`backstock worker` runs them).")
]
Migrate = Annotated[
    bool,
    typer.Option("--migrate", help="Bring the database schema up to date first (PostgreSQL)."),
]


@app.command()
def serve(
    host: Host = None,
    port: Port = None,
    workers: Workers = None,
    no_worker: NoWorker = False,
    migrate: Migrate = False,
) -> None:
    """Serve the API (with a job worker process unless --no-worker)."""
    settings = settings_from(
        host=host, port=port, workers=workers, run_worker=False if no_worker else None
    )
    if (
        not _loopback(settings.host)
        and settings.base_url is None
        and settings.allowed_host_set is None
    ):
        err.print(
            f"[red]Listening on {settings.host} needs BACKSTOCK_BASE_URL or "
            "BACKSTOCK_ALLOWED_HOSTS[/red]: links would otherwise copy any Host header a client "
            "sends."
        )
        raise typer.Exit(2)
    ready(settings, migrate=migrate)
    caution(settings)
    # Worker processes of their own, so that applying jobs never takes the API processes' time
    # (an in-process worker thread competes with the event loop for the interpreter). It stays
    # in-process where another process could not hear of new jobs at once.
    own_process = settings.run_worker and worker_hears_other_processes(settings)
    # The server's processes build their own app from the environment: hand the flags on.
    os.environ.update({
        "BACKSTOCK_HOST": settings.host,
        "BACKSTOCK_PORT": str(settings.port),
        "BACKSTOCK_RUN_WORKER": "true" if settings.run_worker and not own_process else "false",
    })  # fmt: skip
    processes, why = settings.server_processes(usable_cpus())
    # SQLite has one writer: one worker process. PostgreSQL: as many as API processes, as
    # when each API process ran one.
    workers = (1 if settings.is_sqlite else processes) if own_process else 0
    worker_is = (
        f"{workers} process(es) of its own"
        if own_process
        else "in-process"
        if settings.run_worker
        else "off"
    )
    err.print(
        f"Backstock on [bold]http://{settings.host}:{settings.port}[/bold] "
        f"({processes} process(es) on {event_loop()}, {why}; "
        f"database {redact(settings.database_url)}; worker {worker_is})"
    )
    if processes > 1 and settings.rate_limits == "on" and not settings.redis_url:
        err.print(
            f"[yellow]Rate limits are counted in each process's memory:[/yellow] {processes} "
            f"processes admit up to {processes} times each limit; BACKSTOCK_REDIS_URL shares "
            "them."
        )
    err.print(
        f"Get an API key: [bold]{self_command()} keys create --account demo "
        "--scope catalogs:read --scope catalogs:write[/bold]"
    )
    with _metrics_directory(), _worker_processes(workers, settings.stop_timeout_seconds):
        run_granian(
            "backstock.bootstrap:app_from_environment",
            settings.host,
            settings.port,
            processes,
            settings.header_timeout_seconds,
            settings.stop_timeout_seconds,
        )


@contextlib.contextmanager
def _metrics_directory() -> Iterator[None]:
    """The directory every server process writes its metrics to, so that ``/metrics`` answers
    for all of them (``PROMETHEUS_MULTIPROC_DIR``: a fresh one unless given)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        telemetry.count_in_files()
        yield
        return
    with tempfile.TemporaryDirectory(prefix="backstock-metrics-") as directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        telemetry.count_in_files()
        try:
            yield
        finally:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]
            telemetry.count_in_files(on=False)


PARENT_VARIABLE = "BACKSTOCK_SERVE_PID"
"""Set for the worker processes ``serve`` starts: they stop when that process is gone."""
RESTART_SECONDS = (1.0, 30.0)
"""A worker process that dies is started again after 1 s, doubling to 30 s while it keeps
dying within a minute."""


@contextlib.contextmanager
def _worker_processes(count: int, stop_timeout_seconds: int) -> Iterator[None]:
    """``count`` ``backstock worker`` processes, children of ``serve`` while the server runs:
    started again whenever one exits, sent SIGTERM at the end (each finishes its batch and
    hands its job back), killed if not stopped within the stop timeout."""
    stopping = threading.Event()
    running: dict[int, subprocess.Popen[bytes]] = {}
    command = [sys.executable, "-P", "-m", "backstock", "worker"]
    env = os.environ | {PARENT_VARIABLE: str(os.getpid())}

    def supervise(slot: int) -> None:
        wait = RESTART_SECONDS[0]
        while not stopping.is_set():
            started = time.monotonic()
            try:
                running[slot] = process = subprocess.Popen(command, env=env)
            except OSError as exc:
                err.print(f"[red]Cannot start a worker process ({exc})[/red]")
            else:
                while process.poll() is None and not stopping.wait(0.5):
                    pass
                if stopping.is_set():
                    return
                err.print(f"[red]A worker process exited ({process.returncode}); starting "
                          f"another in {wait:g} s[/red]")  # fmt: skip
            if time.monotonic() - started > 60:
                wait = RESTART_SECONDS[0]
            stopping.wait(wait)
            wait = min(wait * 2, RESTART_SECONDS[1])

    supervisors = [
        threading.Thread(target=supervise, args=(n,), name=f"backstock-supervisor-{n}")
        for n in range(count)
    ]
    for supervisor in supervisors:
        supervisor.start()
    try:
        yield
    finally:
        stopping.set()
        for supervisor in supervisors:
            supervisor.join()
        for process in running.values():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + stop_timeout_seconds
        for process in running.values():
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run_granian(
    factory: str,
    host: str,
    port: int,
    workers: int,
    header_timeout_seconds: float,
    stop_timeout_seconds: int,
) -> None:
    """Serve the ASGI app ``factory`` (``module:function``) with granian, as ``serve`` does (the
    benchmarks serve their floors through this too, so both get the same server).

    ``stop_timeout_seconds`` bounds a server process's stop: without it granian waits for each
    forever, and a process that was still starting when the SIGTERM came (granian 2.8.9, about
    one stop in six right after start-up with two processes) never stops on its own."""
    from granian import Granian
    from granian.constants import Interfaces, Loops
    from granian.http import HTTP1Settings

    Granian(
        factory,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        loop=Loops(event_loop()),
        workers=workers,
        factory=True,
        log_access=False,  # Backstock writes its own access line (BACKSTOCK_LOG_LEVEL=info)
        respawn_failed_workers=True,
        workers_kill_timeout=stop_timeout_seconds,
        # A client that trickles its headers is dropped; one that trickles its body gets 408.
        http1_settings=HTTP1Settings(header_read_timeout=int(header_timeout_seconds * 1000)),
    ).serve()


def event_loop() -> str:
    """The server processes' event loop: uvloop's where it imports (``granian[uvloop]``, a
    dependency except on Windows), which served a median of 9-12 % more job polls a second than
    asyncio's (interleaved A/B in bench/README.md); named rather than left to granian's
    ``auto``, which would take any other loop that happened to be installed."""
    try:
        importlib.import_module("uvloop")
    except ImportError:
        return "asyncio"
    return "uvloop"


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity, bounded by a cgroup v2 CPU quota (a
    container started with ``--cpus 2`` on a 16-core host has 2)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus or 1, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus or 1


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def self_command() -> str:
    """How the user can run this CLI again (``.venv/bin/backstock`` after ``make serve``)."""
    here = Path(sys.argv[0])
    on_path = shutil.which("backstock")
    if here.name == "backstock" and here.exists() and on_path != str(here.resolve()):
        return os.path.relpath(here)
    return "backstock"


@app.command()
def worker(
    concurrency: Annotated[
        int | None,
        typer.Option(help=setting_help("worker_concurrency", "Jobs run at once by this process.")),
    ] = None,
) -> None:
    """Run a job worker until SIGTERM or SIGINT (then finish the batch, hand the job back)."""
    settings = settings_from(worker_concurrency=concurrency)
    ready(settings)
    if PARENT_VARIABLE not in os.environ:  # serve, which started it, has said it
        caution(settings)
    os.nice(settings.worker_nice)
    telemetry.configure_logging(settings.log_level, settings.log_format)
    services = build_services(settings)
    runner = build_worker(services, settings.worker_concurrency)
    settle_heap()

    def stop(_signum: int, _frame: object) -> None:
        runner.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    runner.start()
    where = redact(settings.database_url)
    err.print(f"Worker running ({settings.worker_concurrency} at once) on {where}")
    parent = os.environ.get(PARENT_VARIABLE)  # started by serve: it ends when serve is gone
    while not runner.stop.wait(0.5):
        if parent is not None and str(os.getppid()) != parent:
            err.print("serve is gone: the worker stops")
            runner.stop.set()
    runner.shutdown()
    services.close()


@app.command()
def migrate() -> None:
    """Bring the database schema to the newest version."""
    settings = settings_from()
    migrate_database(settings)
    err.print(f"Database {redact(settings.database_url)} is at the newest schema.")
