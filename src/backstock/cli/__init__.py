"""``backstock``: serve the API, run workers, migrate, manage accounts, keys and jobs, load a
catalog. Each option's help shows its default and its ``BACKSTOCK_*`` variable, read from the
settings model itself."""

from __future__ import annotations

from backstock.cli import admin, faults, load, serving
from backstock.cli.common import app, main
from backstock.cli.serving import run_granian, self_command

__all__ = ["admin", "app", "faults", "load", "main", "run_granian", "self_command", "serving"]
