"""The command line, as an operator uses it (in process, against a real SQLite file)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from backstock.bootstrap import build_services
from backstock.cli import app, common
from backstock.domain import keys
from backstock.settings import Settings
from tests.support import call


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("BACKSTOCK_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    # tables and help unwrapped, as on a wide terminal (the tables' console was made on import)
    monkeypatch.setenv("COLUMNS", "240")
    monkeypatch.setattr(common.out, "width", 240)
    runner = CliRunner()

    def invoke(*args: str):  # type: ignore[no-untyped-def]
        return runner.invoke(app, list(args))

    return invoke


def test_keys_create_prints_only_the_key_and_it_works(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = run("keys", "create", "--account", "demo", "--scope", "catalogs:read")
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert key.startswith("pk_") and "\n" not in key
    services = build_services(Settings(database_url=f"sqlite:///{tmp_path / 'cli.db'}"))
    try:

        def authenticate() -> Any:
            presented = keys.from_authorization(f"Klaviyo-API-Key {key}")
            return call(services, lambda: services.accounts.authenticate(presented))

        who = authenticate()
        assert who.scopes == {"catalogs:read"}
        listed = run("keys", "list", "--account", "demo")
        assert who.key_id in listed.stdout and key not in listed.stdout
        assert run("keys", "revoke", who.key_id).exit_code == 0
        with pytest.raises(Exception, match="revoked"):
            authenticate()
        assert run("keys", "revoke", who.key_id).exit_code == 1  # already revoked
    finally:
        services.close()


def test_bad_scope_is_refused(run) -> None:  # type: ignore[no-untyped-def]
    result = run("keys", "create", "--account", "demo", "--scope", "catalogs:admin")
    assert result.exit_code == 1
    assert "Scopes must be among" in result.stderr


def test_accounts_create_refuses_duplicates(run) -> None:  # type: ignore[no-untyped-def]
    assert run("accounts", "create", "acme").exit_code == 0
    again = run("accounts", "create", "acme")
    assert again.exit_code == 1 and "already exists" in again.stderr


def test_keys_list_for_unknown_account_fails(run) -> None:  # type: ignore[no-untyped-def]
    result = run("keys", "list", "--account", "nobody")
    assert result.exit_code == 1 and "No account named" in result.stderr


def test_migrate_and_invalid_configuration(run, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    assert run("migrate").exit_code == 0
    monkeypatch.setenv("BACKSTOCK_DATABASE_URL", "mysql://nope")
    result = run("migrate")
    assert result.exit_code == 2 and "Invalid configuration" in result.stderr


def test_serve_tells_how_to_get_a_key_with_the_path_that_works(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """After ``make serve`` the CLI is ``.venv/bin/backstock``, not on PATH: say so."""
    import backstock.cli.serving as cli

    executable = tmp_path / "bin" / "backstock"
    executable.parent.mkdir()
    executable.write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.sys, "argv", [str(executable)])
    monkeypatch.setattr(cli.shutil, "which", lambda _name: None)
    assert cli.self_command() == "bin/backstock"
    monkeypatch.setattr(cli.shutil, "which", lambda _name: str(executable.resolve()))
    assert cli.self_command() == "backstock"


@pytest.mark.parametrize(
    ("settings", "cpus", "expected"),
    [
        ({}, 8, 1),  # rate limits in each process's memory: N processes would admit N times
        ({"rate_limits": "off"}, 2, 2),
        ({"rate_limits": "off"}, 1, 1),
        ({"redis_url": "redis://127.0.0.1:6379/0"}, 2, 2),  # shared limits
        ({"rate_limits": "off"}, 16, 4),  # SQLite: more would queue on its one writer
        # PostgreSQL: 90 connections at 2 x 10 + 10 a process
        ({"rate_limits": "off", "database_url": "postgresql://h/d"}, 16, 3),
        ({"rate_limits": "off", "database_url": "postgresql://h/d", "pool_size": "40"}, 16, 1),
        ({"workers": "6"}, 2, 6),  # told: as told, limits or not
        ({"rate_limits": "off", "database_url": "sqlite://"}, 8, 1),  # a database per process
    ],
)
def test_serve_picks_its_process_count_from_the_machine_and_the_limits(
    settings: dict[str, str], cpus: int, expected: int
) -> None:
    processes, why = Settings(**settings).server_processes(cpus)  # type: ignore[arg-type]
    assert processes == expected
    assert "at most 0" not in why


def test_usable_cpus_is_within_the_affinity() -> None:
    from backstock.cli.serving import usable_cpus

    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))


def test_help_shows_each_options_default_and_variable(run) -> None:  # type: ignore[no-untyped-def]
    result = run("serve", "--help")
    assert result.exit_code == 0
    flat = " ".join(result.stdout.split())
    assert "[env BACKSTOCK_PORT; default 8000]" in flat
    assert "[env BACKSTOCK_HOST; default 127.0.0.1]" in flat
    assert "[env BACKSTOCK_WORKERS; default auto]" in flat
    assert run("--version").stdout.startswith("backstock ")


def test_an_unmigrated_postgres_database_is_refused_in_one_line(  # type: ignore[no-untyped-def]
    run, monkeypatch: pytest.MonkeyPatch, pg_template: str
) -> None:
    import psycopg

    from tests.conftest import PG_ADMIN, pg_url_of

    name = f"backstock_empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        monkeypatch.setenv("BACKSTOCK_DATABASE_URL", pg_url_of(name))
        for command in (("keys", "create", "--account", "a", "--scope", "catalogs:read"),
                        ("accounts", "list"), ("jobs", "list"), ("worker",), ("serve",)):  # fmt: skip
            result = run(*command)
            assert result.exit_code == 1, (command, result.output)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and "backstock migrate" in lines[0], (command, result.stderr)
        assert run("migrate").exit_code == 0
        assert run("accounts", "list").exit_code == 0
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_jobs_and_accounts_commands(run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    key = run("keys", "create", "--account", "shop", "--scope", "catalogs:write").stdout.strip()
    services = build_services(Settings(database_url=f"sqlite:///{tmp_path / 'cli.db'}"))
    try:
        from backstock.domain.jobs import KINDS
        from tests.support import bulk_body

        who = call(
            services,
            lambda: services.accounts.authenticate(
                keys.from_authorization(f"Klaviyo-API-Key {key}")
            ),
        )
        body = orjson.dumps(bulk_body([("GONE", {"price": 1.0})]))
        job = call(
            services,
            lambda: services.jobs.spawn(who, KINDS["catalog-variant-bulk-update-job"], body),
        )
        while call(services, lambda: services.jobs.claim("cli-test")) is not None:
            pass
    finally:
        services.close()
    listed = run("jobs", "list", "--account", "shop", "--kind", "variant-update")
    assert listed.exit_code == 0 and job.id in listed.stdout and "complete" in listed.stdout
    assert job.id not in run("jobs", "list", "--status", "queued").stdout
    # at the 80 columns of a pipe (rich's width when no stream is a terminal) the id is whole
    monkeypatch.setattr(common.out, "width", 80)
    narrow = run("jobs", "list", "--account", "shop").stdout
    assert job.id in narrow and max(map(len, narrow.splitlines())) <= 80
    monkeypatch.setattr(common.out, "width", 240)
    shown = run("jobs", "show", job.id)
    assert (
        shown.exit_code == 0
        and "not_found" in shown.stdout
        and "/data/attributes/variants/data/0" in shown.stdout
    )
    assert run("jobs", "show", "NOPE").exit_code == 1
    assert run("jobs", "list", "--kind", "bogus").exit_code == 2
    assert "shop" in run("accounts", "list").stdout
    assert run("jobs", "watch", "--once").exit_code == 0
