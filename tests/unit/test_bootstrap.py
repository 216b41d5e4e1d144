"""The composition root's process-wide settings."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from backstock.bootstrap import app_from_environment


def test_the_server_factory_takes_what_it_built_out_of_the_collectors_scans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full collection walked every object the process built to serve (~80k, 55-60 ms here)
    every few seconds under load: each a pause of every request in flight. The factory the
    server processes import freezes them (``settle_heap``); the ``worker`` command does too."""
    monkeypatch.setenv("BACKSTOCK_DATABASE_URL", f"sqlite:///{tmp_path / 'heap.db'}")
    gc.unfreeze()
    try:
        app = app_from_environment()
        assert gc.get_freeze_count() > 10_000  # the modules and the app, not a handful
        assert all(scanned is not app for scanned in gc.get_objects())
        app.services.close()
    finally:
        gc.unfreeze()
    assert any(scanned is app for scanned in gc.get_objects())  # the test's own check can fail
