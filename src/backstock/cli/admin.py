"""``accounts``, ``keys``, ``jobs`` and ``webhooks``: what an operator looks at and changes."""

from __future__ import annotations

import time
from typing import Annotated, Any

import orjson
import typer
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table

from backstock.bootstrap import run
from backstock.cli.common import app, attempt, err, out, services
from backstock.domain.clock import to_iso
from backstock.domain.jobs import KINDS, STATUSES, JobRecord

accounts_app = typer.Typer(help="Accounts.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
jobs_app = typer.Typer(help="Bulk jobs of every account.", no_args_is_help=True)
webhooks_app = typer.Typer(
    help="Webhooks: each account's job ends, POSTed and signed.", no_args_is_help=True
)
app.add_typer(accounts_app, name="accounts")
app.add_typer(keys_app, name="keys")
app.add_typer(jobs_app, name="jobs")
app.add_typer(webhooks_app, name="webhooks")

Scope = Annotated[
    list[str], typer.Option("--scope", help="catalogs:read and/or catalogs:write (repeat).")
]
Account = Annotated[str | None, typer.Option(help="Only this account's (its name).")]
Status = Annotated[str | None, typer.Option(help=f"Only jobs {'|'.join(STATUSES)}.")]
Kind = Annotated[
    str | None,
    typer.Option(help="Only this kind, e.g. catalog-variant-bulk-update-job (or variant-update)."),
]


# ---- accounts and keys -------------------------------------------------------------------------


@accounts_app.command("create")
def accounts_create(name: str) -> None:
    """Create an account."""
    account_id = attempt(lambda made: made.accounts.create_account(name))
    typer.echo(f"{account_id}")


@accounts_app.command("list")
def accounts_list() -> None:
    """List the accounts, with how many jobs each has queued or processing."""
    made = services()
    table = Table("id", "name", "created", "open jobs")
    for record in run(made, made.accounts.list_accounts):
        table.add_row(
            str(record.id), escape(record.name), to_iso(record.created_at), str(record.open_jobs)
        )
    out.print(table)


@keys_app.command("create")
def keys_create(
    account: Annotated[str, typer.Option(help="Account name (created if missing).")], scope: Scope
) -> None:
    """Create an API key and print it (alone, on stdout). It is shown only this once."""
    key = attempt(lambda made: made.accounts.create_key(account, scope))
    err.print(
        f"Key id {key.key_id} for account '{escape(account)}' with {', '.join(sorted(key.scopes))}"
    )
    typer.echo(key.key)


@keys_app.command("list")
def keys_list(account: Annotated[str, typer.Option(help="Account name.")]) -> None:
    """List an account's keys (never the keys themselves)."""
    records = attempt(lambda made: made.accounts.list_keys(account))
    table = Table("key id", "scopes", "created", "revoked")
    for record in records:
        table.add_row(
            record.id, " ".join(sorted(record.scopes)), to_iso(record.created_at),
            to_iso(record.revoked_at) or "",
        )  # fmt: skip
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (keys list shows it), or the key.")],
) -> None:
    """Revoke a key; it stops working at once in every process. Never prints a secret."""
    revoked = attempt(lambda made: made.accounts.revoke_key(key_id))
    err.print(f"Revoked {revoked}")


# ---- jobs --------------------------------------------------------------------------------------


def _kind(given: str | None) -> str | None:
    """A job type, or its short name (``variant-update``)."""
    if given is None or given in KINDS:
        return given
    noun, _, action = given.partition("-")
    full = f"catalog-{noun}-bulk-{action}-job"
    if full not in KINDS:
        err.print(f"[red]Unknown kind '{escape(given)}'[/red]; one of: {', '.join(KINDS)}")
        raise typer.Exit(2)
    return full


def _status(given: str | None) -> str | None:
    if given is not None and given not in STATUSES:
        err.print(f"[red]Unknown status '{escape(given)}'[/red]; one of: {', '.join(STATUSES)}")
        raise typer.Exit(2)
    return given


def _progress(job: JobRecord) -> Any:
    done = job.completed_count + job.failed_count
    return ProgressBar(total=job.total_count, completed=done, width=20)


def _jobs_table(rows: list[tuple[str, JobRecord]], bars: bool) -> Table:
    table = Table("job", "account", "kind", "status", "done", "failed", "created")
    table.columns[0].no_wrap = True  # an id is copied whole
    if bars:
        table.add_column("progress")
    for account, job in rows:
        cells: list[Any] = [
            job.id, escape(account), job.kind.removeprefix("catalog-").removesuffix("-job"),
            job.status, f"{job.completed_count + job.failed_count}/{job.total_count}",
            str(job.failed_count), to_iso(job.created_at),
        ]  # fmt: skip
        if bars:
            cells.append(_progress(job))
        table.add_row(*cells)
    return table


@jobs_app.command("list")
def jobs_list(
    account: Account = None,
    status: Status = None,
    kind: Kind = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
) -> None:
    """List jobs, newest first."""
    made = services()
    rows = run(made, lambda: made.jobs.browse(account, _status(status), _kind(kind), limit))
    out.print(_jobs_table(rows, bars=False))


@jobs_app.command("show")
def jobs_show(job_id: str) -> None:
    """A job's progress and per-item errors."""
    account, job = attempt(lambda made: made.jobs.find(job_id))
    out.print(_jobs_table([(account, job)], bars=True))
    errors = orjson.loads(job.errors)
    if errors:
        table = Table("item", "code", "detail")
        for error in errors:
            pointer = error.get("source", {}).get("pointer", "")
            table.add_row(escape(pointer), escape(error["code"]), escape(error["detail"]))
        out.print(table)
    for name, value in (("completed", job.completed_at), ("expires", job.expires_at)):
        if value is not None:
            out.print(f"{name}: {to_iso(value)}")


@jobs_app.command("watch")
def jobs_watch(
    account: Account = None,
    kind: Kind = None,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 1.0,
    once: Annotated[bool, typer.Option(help="Draw the table once and stop.")] = False,
) -> None:
    """A live table of the jobs queued or processing, with progress bars (Ctrl-C stops)."""
    made = services()
    kind = _kind(kind)

    def table() -> Group:
        rows = run(made, lambda: made.jobs.browse(account, "processing", kind, 50))
        rows += run(made, lambda: made.jobs.browse(account, "queued", kind, 50))
        return Group(_jobs_table(rows, bars=True), f"{len(rows)} job(s) open")

    if once:
        out.print(table())
        return
    with Live(table(), console=out, refresh_per_second=4) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(table())
        except KeyboardInterrupt:
            pass


# ---- webhooks ------------------------------------------------------------------------------------

Name = Annotated[str, typer.Argument(help="The account's name.")]


@webhooks_app.command("set")
def webhooks_set(
    account: Name,
    url: Annotated[str, typer.Argument(help="Where to POST: an http:// or https:// URL.")],
    secret: Annotated[
        str | None, typer.Option(help="The signing secret (default: a new random one).")
    ] = None,
) -> None:
    """Send the account's job ends (complete, cancelled) to URL, signed; prints the secret
    (alone, on stdout)."""
    hook = attempt(lambda made: made.webhooks.set(account, url, secret))
    err.print(f"Webhook of '{escape(account)}': {escape(hook.url)}")
    typer.echo(hook.secret)


@webhooks_app.command("show")
def webhooks_show(account: Name) -> None:
    """The account's webhook URL (never its secret)."""
    hook = attempt(lambda made: made.webhooks.get(account))
    out.print(f"{escape(hook.url)} (since {to_iso(hook.created_at)})")


@webhooks_app.command("remove")
def webhooks_remove(account: Name) -> None:
    """Stop sending the account's job ends (pending deliveries are given up)."""
    attempt(lambda made: made.webhooks.remove(account))
    err.print(f"Removed the webhook of '{escape(account)}'")


@webhooks_app.command("deliveries")
def webhooks_deliveries(
    account: Name,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many, newest first.")] = 50,
) -> None:
    """The account's delivery log: each job end, its state, tries and last answer."""
    made = services()
    table = Table(
        "delivery", "job", "event", "status", "tries", "last answer", "created", "next try"
    )
    for d in run(made, lambda: made.webhooks.deliveries(account, limit)):
        answer = d.last_error or (str(d.last_status) if d.last_status is not None else "")
        upcoming = to_iso(d.next_attempt_at) if d.status == "pending" else ""
        table.add_row(
            str(d.pk), d.job_id, d.event, d.status, str(d.attempts), escape(answer),
            to_iso(d.created_at), upcoming or "",
        )  # fmt: skip
    out.print(table)
