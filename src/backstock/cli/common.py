"""What every command shares: the Typer app, consoles, settings, and a ready database."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from backstock.bootstrap import NotMigrated, build_services, cautions, prepare_database, run
from backstock.domain.errors import BackstockError
from backstock.services.container import Services
from backstock.settings import Settings

T = TypeVar("T")

app = typer.Typer(
    help="Backstock: a self-hostable catalog service that speaks Klaviyo's Catalogs API.",
    no_args_is_help=True,
    add_completion=False,
)
err = Console(stderr=True, soft_wrap=True)  # a message stays one line, whatever the width
out = Console()


def setting_help(name: str, text: str) -> str:
    """Help for an option that sets a setting: its variable and its default, from the model
    (escaped: Rich would take ``[env …]`` for markup and swallow it)."""
    field = Settings.model_fields[name]
    return escape(f"{text} [env BACKSTOCK_{name.upper()}; default {field.default}]")


def settings_from(**overrides: object) -> Settings:
    given = {name: value for name, value in overrides.items() if value is not None}
    try:
        return Settings(**given)  # type: ignore[arg-type]
    except ValueError as exc:
        err.print(f"[red]Invalid configuration:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc


def fail(exc: BackstockError) -> typer.Exit:
    err.print(f"[red]{escape(exc.detail)}[/red]")
    return typer.Exit(1)


def ready(settings: Settings, *, migrate: bool = False) -> None:
    """Refuse, in one line, a database that is not migrated or cannot be reached."""
    try:
        prepare_database(settings, migrate=migrate)
    except NotMigrated as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    except Exception as exc:  # noqa: BLE001 - the driver's own words, on one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        err.print(
            f"[red]Cannot use the database {redact(settings.database_url)}:[/red] {escape(reason)}"
        )
        raise typer.Exit(1) from None


def caution(settings: Settings) -> None:
    """Say what an operator should know before a server or a worker runs (``cautions``); a
    check that fails to answer holds nothing up."""
    try:
        found = cautions(settings)
    except Exception:  # noqa: BLE001 - a caution is advice: the database was ready just now
        return
    for text in found:
        err.print(f"[yellow]{escape(text)}[/yellow]")


def services() -> Services:
    """Services for a command that reads or writes the database (a ready one)."""
    settings = settings_from()
    ready(settings)
    return build_services(settings)


def attempt(work: Callable[[Services], Awaitable[T]]) -> T:
    """Run one service call for a command; a refusal is one red line and exit status 1."""
    made = services()
    try:
        return run(made, lambda: work(made))
    except BackstockError as exc:
        raise fail(exc) from exc


def redact(url: str) -> str:
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


def _version(shown: bool) -> None:
    if shown:
        out.print(f"backstock {version('backstock')}")
        raise typer.Exit()


@app.callback()
def _root(
    _version_: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Backstock: a self-hostable catalog service that speaks Klaviyo's Catalogs API."""


def main() -> None:
    app()
