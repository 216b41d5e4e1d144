"""``backstock faults``: per-account test faults (``BACKSTOCK_TEST_FAULTS=on``; docs/testing.md)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich.markup import escape

from backstock.bootstrap import run
from backstock.cli.common import app, err, out, services
from backstock.faults import RuleBook
from backstock.services.container import Services

faults_app = typer.Typer(
    help="Test faults per account (a server started with BACKSTOCK_TEST_FAULTS=on obeys them).",
    no_args_is_help=True,
)
app.add_typer(faults_app, name="faults")

Name = Annotated[str, typer.Argument(help="The account's name.")]


def _book_and_account(made: Services, name: str) -> tuple[RuleBook, int]:
    if not made.settings.is_sqlite:
        err.print("[red]Test faults work only with an SQLite BACKSTOCK_DATABASE_URL[/red]")
        raise typer.Exit(2)
    found = [a.id for a in run(made, made.accounts.list_accounts) if a.name == name]
    if not found:
        err.print(f"[red]No account named '{escape(name)}'[/red]")
        raise typer.Exit(1)
    if made.settings.test_faults != "on":
        err.print("Note: only a server started with BACKSTOCK_TEST_FAULTS=on obeys these rules")
    return RuleBook.of(made.settings), found[0]


@faults_app.command("set")
def faults_set(
    account: Name,
    fail_spawns: Annotated[
        int | None, typer.Option(min=0, help="Fail the account's next N job spawns.")
    ] = None,
    status: Annotated[
        int | None, typer.Option(help="…with this status: 429 (throttled) or 503.")
    ] = None,
    hold: Annotated[
        float | None, typer.Option(min=0, help="Keep its new jobs queued this many seconds.")
    ] = None,
    item_delay_ms: Annotated[
        int | None,
        typer.Option(min=0, help="Apply its jobs one item at a time, each after this delay."),
    ] = None,
    fail_item: Annotated[
        list[str] | None,
        typer.Option(help="EXTERNAL_ID=CODE: its jobs fail that item with that code (repeat)."),
    ] = None,
) -> None:
    """Set some of an account's fault rules (the others stay as they are)."""
    made = services()
    book, account_id = _book_and_account(made, account)
    changes: dict[str, Any] = {
        name: value
        for name, value in (
            ("fail_spawns", fail_spawns), ("fail_status", status), ("hold_seconds", hold),
            ("item_delay_ms", item_delay_ms),
        )
        if value is not None
    }  # fmt: skip
    if fail_item is not None:
        pairs = [given.partition("=") for given in fail_item]
        if any(not external or not code for external, _, code in pairs):
            err.print("[red]--fail-item takes EXTERNAL_ID=CODE[/red]")
            raise typer.Exit(2)
        changes["fail_items"] = {external: code for external, _, code in pairs}
    try:
        rules = book.change(account_id, **changes)
    except ValueError as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(2) from exc
    out.print_json(data=asdict(rules))


@faults_app.command("show")
def faults_show(account: Name) -> None:
    """An account's fault rules."""
    made = services()
    book, account_id = _book_and_account(made, account)
    out.print_json(data=asdict(book.rules(account_id)))


@faults_app.command("clear")
def faults_clear(account: Name) -> None:
    """Drop an account's fault rules."""
    made = services()
    book, account_id = _book_and_account(made, account)
    book.clear(account_id)
    err.print(f"Cleared the fault rules of '{escape(account)}'")
