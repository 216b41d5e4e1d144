"""The command line, as an operator uses it (in process, against a real SQLite file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from backstock.bootstrap import build_services
from backstock.cli import app
from backstock.domain import keys
from backstock.settings import Settings
from tests.support import call


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("BACKSTOCK_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
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
    import backstock.cli as cli

    executable = tmp_path / "bin" / "backstock"
    executable.parent.mkdir()
    executable.write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.sys, "argv", [str(executable)])
    monkeypatch.setattr(cli.shutil, "which", lambda _name: None)
    assert cli._self_command() == "bin/backstock"
    monkeypatch.setattr(cli.shutil, "which", lambda _name: str(executable.resolve()))
    assert cli._self_command() == "backstock"
