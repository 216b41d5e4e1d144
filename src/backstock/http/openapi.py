"""Backstock's own OpenAPI 3.1 document, served at ``/openapi.json`` (placeholder)."""

from __future__ import annotations

from typing import Any

PATH = "/openapi.json"


def build(routes: Any) -> dict[str, Any]:
    return {"openapi": "3.1.0", "info": {"title": "Backstock", "version": "0.2.0"}, "paths": {}}
