"""``backstock``: serve the API, run workers, migrate, manage accounts and API keys."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from backstock.bootstrap import build_services, build_worker, migrate_database, run
from backstock.domain.clock import to_iso
from backstock.domain.errors import BackstockError
from backstock.services.container import Services
from backstock.settings import Settings

app = typer.Typer(
    help="Backstock: a self-hostable catalog service that speaks Klaviyo's Catalogs API.",
    no_args_is_help=True,
    add_completion=False,
)
accounts_app = typer.Typer(help="Accounts.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(accounts_app, name="accounts")
app.add_typer(keys_app, name="keys")
err = Console(stderr=True)


def _settings(**overrides: object) -> Settings:
    given = {name: value for name, value in overrides.items() if value is not None}
    try:
        return Settings(**given)  # type: ignore[arg-type]
    except ValueError as exc:
        err.print(f"[red]Invalid configuration:[/red] {exc}")
        raise typer.Exit(2) from exc


def _fail(exc: BackstockError) -> typer.Exit:
    err.print(f"[red]{exc.detail}[/red]")
    return typer.Exit(1)


Host = Annotated[
    str | None, typer.Option(help="Address to listen on [env BACKSTOCK_HOST; default 127.0.0.1].")
]
Port = Annotated[int | None, typer.Option(help="Port [env BACKSTOCK_PORT; default 8000].")]
Workers = Annotated[
    int | None, typer.Option("--workers", help="API processes [env BACKSTOCK_WORKERS; default 1].")
]
NoWorker = Annotated[
    bool, typer.Option("--no-worker", help="Do not run a job worker inside the API processes.")
]


@app.command()
def serve(
    host: Host = None, port: Port = None, workers: Workers = None, no_worker: NoWorker = False
) -> None:
    """Serve the API (with an in-process job worker unless --no-worker)."""
    settings = _settings(
        host=host, port=port, workers=workers, run_worker=False if no_worker else None
    )
    # The server's processes build their own app from the environment: hand the flags on.
    os.environ.update({
        "BACKSTOCK_HOST": settings.host,
        "BACKSTOCK_PORT": str(settings.port),
        "BACKSTOCK_RUN_WORKER": "true" if settings.run_worker else "false",
    })  # fmt: skip
    if settings.is_sqlite:
        migrate_database(settings)
    err.print(
        f"Backstock on [bold]http://{settings.host}:{settings.port}[/bold] "
        f"({settings.workers} process(es), database {_redact(settings.database_url)}, "
        f"worker {'in-process' if settings.run_worker else 'off'})"
    )
    err.print(
        f"Get an API key: [bold]{_self_command()} keys create --account demo "
        "--scope catalogs:read --scope catalogs:write[/bold]"
    )
    run_granian(
        "backstock.bootstrap:app_from_environment",
        settings.host,
        settings.port,
        settings.workers,
        settings.header_timeout_seconds,
    )


def run_granian(
    factory: str, host: str, port: int, workers: int, header_timeout_seconds: float
) -> None:
    """Serve the ASGI app ``factory`` (``module:function``) with granian, as ``serve`` does (the
    benchmarks serve their floors through this too, so both get the same server)."""
    from granian import Granian
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings

    Granian(
        factory,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        factory=True,
        log_access=False,
        respawn_failed_workers=True,
        # A client that trickles its headers is dropped; one that trickles its body gets 408.
        http1_settings=HTTP1Settings(header_read_timeout=int(header_timeout_seconds * 1000)),
    ).serve()


def _self_command() -> str:
    """How the user can run this CLI again (``.venv/bin/backstock`` after ``make serve``)."""
    here = Path(sys.argv[0])
    on_path = shutil.which("backstock")
    if here.name == "backstock" and here.exists() and on_path != str(here.resolve()):
        return os.path.relpath(here)
    return "backstock"


def _redact(url: str) -> str:
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


@app.command()
def worker(
    concurrency: Annotated[
        int | None,
        typer.Option(
            help="Jobs run at once by this process [env BACKSTOCK_WORKER_CONCURRENCY; default 1]."
        ),
    ] = None,
) -> None:
    """Run a job worker until SIGTERM or SIGINT (then finish the batch, hand the job back)."""
    settings = _settings(worker_concurrency=concurrency)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.is_sqlite:
        migrate_database(settings)
    services = build_services(settings)
    runner = build_worker(services, settings.worker_concurrency)

    def stop(_signum: int, _frame: object) -> None:
        runner.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    runner.start()
    where = _redact(settings.database_url)
    err.print(f"Worker running ({settings.worker_concurrency} at once) on {where}")
    while not runner.stop.wait(0.5):
        pass
    runner.shutdown()
    services.close()


@app.command()
def migrate() -> None:
    """Bring the database schema to the newest version."""
    settings = _settings()
    migrate_database(settings)
    err.print(f"Database {_redact(settings.database_url)} is at the newest schema.")


@accounts_app.command("create")
def accounts_create(name: str) -> None:
    """Create an account."""
    services = _services()
    try:
        account_id = run(services, lambda: services.accounts.create_account(name))
    except BackstockError as exc:
        raise _fail(exc) from exc
    typer.echo(f"{account_id}")


Scope = Annotated[
    list[str], typer.Option("--scope", help="catalogs:read and/or catalogs:write (repeat).")
]


@keys_app.command("create")
def keys_create(
    account: Annotated[str, typer.Option(help="Account name (created if missing).")], scope: Scope
) -> None:
    """Create an API key and print it (alone, on stdout). It is shown only this once."""
    services = _services()
    try:
        key = run(services, lambda: services.accounts.create_key(account, scope))
    except BackstockError as exc:
        raise _fail(exc) from exc
    err.print(f"Key id {key.key_id} for account '{account}' with {', '.join(sorted(key.scopes))}")
    typer.echo(key.key)


@keys_app.command("list")
def keys_list(account: Annotated[str, typer.Option(help="Account name.")]) -> None:
    """List an account's keys (never the keys themselves)."""
    services = _services()
    try:
        records = run(services, lambda: services.accounts.list_keys(account))
    except BackstockError as exc:
        raise _fail(exc) from exc
    table = Table("key id", "scopes", "created", "revoked")
    for record in records:
        table.add_row(
            record.id,
            " ".join(sorted(record.scopes)),
            to_iso(record.created_at),
            to_iso(record.revoked_at) or "",
        )
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key; it stops working at once in every process."""
    services = _services()
    try:
        run(services, lambda: services.accounts.revoke_key(key_id))
    except BackstockError as exc:
        raise _fail(exc) from exc
    err.print(f"Revoked {key_id}")


def _services() -> Services:
    settings = _settings()
    if settings.is_sqlite:
        migrate_database(settings)
    return build_services(settings)


def main() -> None:
    app()
