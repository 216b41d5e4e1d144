"""Catalog records as the service reads and writes them, and the outcome of applying one
entry of a request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from backstock.domain.resources import Relation, Resource

Record = dict[str, Any]
"""A resource's stored attributes plus ``pk``, ``external_id``, ``created`` and ``updated``
(microseconds), and for a variant ``item_external_id``. JSON attributes are the JSON text they
are stored as (an ``orjson.Fragment``, written into a response as it is)."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why one entry was not applied: its resource ``exists`` already (create), is
    ``missing`` (update, delete), or a related resource it names is missing (``related``:
    ``relation``'s ``index``-th id, ``external``); or a test fault ``forced`` it to fail with
    ``code`` (``BACKSTOCK_TEST_FAULTS``)."""

    reason: Literal["exists", "missing", "related", "forced"]
    relation: str = ""
    index: int = 0
    external: str = ""
    code: str = ""


Outcome = Refusal | None
"""``None``: applied."""

EXISTS = Refusal("exists")
MISSING = Refusal("missing")


@dataclass(frozen=True, slots=True)
class Scope:
    """A list limited to what one resource relates to: ``owner``'s ``relation``."""

    owner: Resource
    relation: Relation
    owner_pk: int
