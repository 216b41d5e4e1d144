"""Backstock for testing Klaviyo integrations: a real server in the test process, and a pytest
plugin (``backstock.testing.plugin``, registered on install) with the fixtures
``backstock_server`` and ``klaviyo_key``. See docs/testing.md.

The names below are imported on first use, so that pytest loading the plugin costs nothing
until a test asks for a server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backstock.testing.server import (
        Backstock,
        BackstockServer,
        Faults,
        RunningBackstock,
        TestSettings,
    )

__all__ = ["Backstock", "BackstockServer", "Faults", "RunningBackstock", "TestSettings"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("backstock.testing.server"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
