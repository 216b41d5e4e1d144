"""Catalog attribute rules and the validator that reports every problem with its JSON pointer.

The same rules serve the item and variant CRUD bodies and the slow path of the bulk update body
(the fast path decodes straight from bytes with msgspec; see ``domain.bulk``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from backstock.domain.errors import Problem

MAX_METADATA_BYTES = 100 * 1024

Check = Callable[[Any, str], str | None]
"""A check returns ``None`` when the value is fine, else the problem's detail."""


_NUL = "\x00"
"""PostgreSQL text cannot hold NUL, so no id or text attribute takes one, on either database.
(``custom_metadata`` is stored as JSON text, where a NUL is escaped: it may hold them.)"""


def _string(value: Any, name: str) -> str | None:
    if not isinstance(value, str):
        return f"'{name}' must be a string"
    return f"'{name}' must not contain NUL characters" if _NUL in value else None


def _number(value: Any, name: str) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"'{name}' must be a number"
    try:
        finite = math.isfinite(float(value))
    except OverflowError:
        finite = False
    return None if finite else f"'{name}' is out of range"


def _policy(value: Any, name: str) -> str | None:
    if isinstance(value, bool) or value not in (0, 1, 2) or not isinstance(value, int):
        return f"'{name}' must be one of 0, 1, 2"
    return None


def _boolean(value: Any, name: str) -> str | None:
    return None if isinstance(value, bool) else f"'{name}' must be true or false"


def _strings(value: Any, name: str) -> str | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return f"'{name}' must be an array of strings"
    return f"'{name}' must not contain NUL characters" if any(_NUL in v for v in value) else None


def _metadata(value: Any, name: str) -> str | None:
    if not isinstance(value, dict):
        return f"'{name}' must be a JSON object"
    return metadata_problem(value, name)


def metadata_problem(
    value: Mapping[str, Any], name: str = "custom_metadata", sized: bool = True
) -> str | None:
    """A flat object: no nested objects, arrays of scalars only, at most 100 KB as JSON
    (``sized=False``: the caller knows it is smaller)."""
    for key, member in value.items():
        if isinstance(member, dict) or (
            isinstance(member, list) and any(isinstance(v, dict | list) for v in member)
        ):
            return f"'{name}' must be a flat object; '{key}' is nested"
    if (
        sized and len(msgspec.json.encode(value)) > MAX_METADATA_BYTES
    ):  # any int size, unlike orjson
        return f"'{name}' must not exceed 100 KB"
    return None


def _integration(value: Any, name: str) -> str | None:
    return None if value == "$custom" else f"'{name}' must be $custom"


def _catalog(value: Any, name: str) -> str | None:
    return None if value == "$default" else f"'{name}' must be $default"


def _external_id(value: Any, name: str) -> str | None:
    if not isinstance(value, str) or not value:
        return f"'{name}' must be a non-empty string"
    if len(value) > 512:
        return f"'{name}' must be at most 512 characters"
    return f"'{name}' must not contain NUL characters" if _NUL in value else None


@dataclass(frozen=True, slots=True)
class AttributeRules:
    checks: Mapping[str, Check]
    required: frozenset[str] = frozenset()
    nullable: frozenset[str] = frozenset()

    def problems(self, attributes: Any, pointer: str) -> list[Problem]:
        if not isinstance(attributes, dict):
            return [Problem("'attributes' must be an object", pointer)]
        found = [
            Problem(f"'{name}' is required", f"{pointer}/{escape_pointer(name)}")
            for name in sorted(self.required - attributes.keys())
        ]
        for name, value in attributes.items():
            detail = self._problem(name, value)
            if detail:
                found.append(Problem(detail, f"{pointer}/{escape_pointer(name)}"))
        return found

    def _problem(self, name: str, value: Any) -> str | None:
        check = self.checks.get(name)
        if check is None:
            return f"'{name}' is not a valid attribute"
        if value is None:
            return None if name in self.nullable else f"'{name}' must not be null"
        return check(value, name)


def escape_pointer(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


_SHARED = {
    "title": _string,
    "description": _string,
    "url": _string,
    "image_full_url": _string,
    "image_thumbnail_url": _string,
    "images": _strings,
    "custom_metadata": _metadata,
    "published": _boolean,
    "price": _number,
}
_VARIANT_ONLY = {"sku": _string, "inventory_policy": _policy, "inventory_quantity": _number}
_IDENTITY = {
    "external_id": _external_id,
    "integration_type": _integration,
    "catalog_type": _catalog,
}


def _nullable(names: Iterable[str], required: Iterable[str] = ()) -> frozenset[str]:
    return frozenset(names) - frozenset(required)


VARIANT_UPDATE = AttributeRules(
    {**_SHARED, **_VARIANT_ONLY}, nullable=_nullable({**_SHARED, **_VARIANT_ONLY})
)
_VARIANT_REQUIRED = frozenset(
    {"external_id", "title", "description", "sku", "inventory_quantity", "price", "url"}
)
VARIANT_CREATE = AttributeRules(
    {**_SHARED, **_VARIANT_ONLY, **_IDENTITY},
    required=_VARIANT_REQUIRED,
    nullable=_nullable({**_SHARED, **_VARIANT_ONLY, **_IDENTITY}, _VARIANT_REQUIRED),
)
ITEM_UPDATE = AttributeRules(dict(_SHARED), nullable=_nullable(_SHARED))
_ITEM_REQUIRED = frozenset({"external_id", "title", "description", "url"})
ITEM_CREATE = AttributeRules(
    {**_SHARED, **_IDENTITY},
    required=_ITEM_REQUIRED,
    nullable=_nullable({**_SHARED, **_IDENTITY}, _ITEM_REQUIRED),
)

VARIANT_COLUMNS = (
    "title",
    "description",
    "sku",
    "inventory_policy",
    "inventory_quantity",
    "price",
    "url",
    "image_full_url",
    "image_thumbnail_url",
    "images",
    "custom_metadata",
    "published",
)
"""The updatable variant attributes, in the order the storage layer writes them."""

ITEM_COLUMNS = tuple(name for name in VARIANT_COLUMNS if name not in _VARIANT_ONLY)

VARIANT_DEFAULTS: Mapping[str, Any] = {"inventory_policy": 0, "published": True}
ITEM_DEFAULTS: Mapping[str, Any] = {"published": True}
