"""Request documents of the catalog item and variant endpoints, parsed into drafts.

Every problem is reported with the JSON pointer of the member at fault; nothing is returned
unless the whole document is valid.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import msgspec

from backstock.domain import attributes as rules
from backstock.domain.errors import InvalidBody, Problem
from backstock.domain.ids import ExternalId, InvalidCompoundId, parse_compound_id


@dataclass(frozen=True, slots=True)
class VariantDraft:
    external_id: ExternalId
    item_external_id: ExternalId
    attributes: dict[str, Any]
    item_pointer: str = "/data/relationships/item/data/id"
    """Where the parent item's id sits in the request, for a 404 when it does not exist."""


@dataclass(frozen=True, slots=True)
class ItemDraft:
    external_id: ExternalId
    attributes: dict[str, Any]
    category_ids: list[str] = field(default_factory=list)


def load_json(body: bytes) -> Any:
    """Parse a body; malformed JSON, NaN, invalid UTF-8 or too deep nesting are one 400.
    msgspec, not orjson: integers beyond 64 bits stay exact (orjson makes them floats)."""
    if not body.strip():
        raise InvalidBody([Problem("The request body is empty; send a JSON:API document", "")])
    try:
        return msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidBody([Problem(f"The request body is not valid JSON: {exc}", "")]) from exc


def members(
    value: Any, pointer: str, required: Collection[str], optional: Collection[str] = ()
) -> list[Problem]:
    """Check that ``value`` is an object with the required members and no unknown ones."""
    if not isinstance(value, dict):
        return [Problem(f"'{pointer or '/'}' must be an object", pointer)]
    found = [
        Problem(f"'{name}' is required", f"{pointer}/{name}")
        for name in required
        if name not in value
    ]
    known = set(required) | set(optional)
    found += [
        Problem(f"'{name}' is not allowed here", f"{pointer}/{rules.escape_pointer(name)}")
        for name in value
        if name not in known
    ]
    return found


def type_problem(value: Any, expected: str, pointer: str) -> list[Problem]:
    if value == expected:
        return []
    return [Problem(f"'type' must be '{expected}'", pointer)]


def id_problem(value: Any, pointer: str) -> list[Problem]:
    if not isinstance(value, str):
        return [Problem("'id' must be a string", pointer)]
    try:
        parse_compound_id(value)
    except InvalidCompoundId as exc:
        return [Problem(str(exc), pointer)]
    return []


def _raise_if(problems: list[Problem]) -> None:
    if problems:
        raise InvalidBody(problems)


def _data(doc: Any) -> dict[str, Any]:
    _raise_if(members(doc, "", ["data"]))
    data = doc["data"]
    if not isinstance(data, dict):
        raise InvalidBody([Problem("'data' must be an object", "/data")])
    return data


def _resource_problems(
    data: dict[str, Any], resource_type: str, attribute_rules: rules.AttributeRules
) -> list[Problem]:
    """``type`` and ``attributes`` when present (``members`` reports them when missing)."""
    problems: list[Problem] = []
    if "type" in data:
        problems += type_problem(data["type"], resource_type, "/data/type")
    if "attributes" in data:
        problems += attribute_rules.problems(data["attributes"], "/data/attributes")
    return problems


def parse_variant_create(doc: Any) -> VariantDraft:
    data = _data(doc)
    problems = members(data, "/data", ["type", "attributes"], ["relationships"])
    problems += _resource_problems(data, "catalog-variant", rules.VARIANT_CREATE)
    item_id, more = _parent_item(data.get("relationships"))
    _raise_if(problems + more)
    attributes = dict(data["attributes"])
    external = ExternalId(attributes.pop("external_id"))
    attributes.pop("integration_type", None)
    attributes.pop("catalog_type", None)
    seed_era = "item" not in data["relationships"]
    pointer = "/data/relationships/" + ("items/data/0/id" if seed_era else "item/data/id")
    return VariantDraft(
        external, item_id, {**rules.VARIANT_DEFAULTS, **_not_null(attributes)}, pointer
    )


def _not_null(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if v is not None}


def _parent_item(relationships: Any) -> tuple[ExternalId, list[Problem]]:
    """The parent item: ``item.data`` (2023-07-15 on) or ``items.data[0]`` (2023-02-22)."""
    pointer = "/data/relationships"
    if relationships is None:
        return ExternalId(""), [
            Problem("A variant needs its parent item in 'relationships'", pointer)
        ]
    problems = members(relationships, pointer, [], ["item", "items"])
    if problems:
        return ExternalId(""), problems
    if "item" in relationships:
        return _linkage(relationships["item"], f"{pointer}/item", many=False)
    if "items" in relationships:
        return _linkage(relationships["items"], f"{pointer}/items", many=True)
    return ExternalId(""), [Problem("'item' is required", f"{pointer}/item")]


def _linkage(value: Any, pointer: str, *, many: bool) -> tuple[ExternalId, list[Problem]]:
    problems = members(value, pointer, ["data"], ["links"])
    if problems:
        return ExternalId(""), problems
    data = value["data"]
    pointer += "/data"
    if many:
        if not isinstance(data, list) or len(data) != 1:
            return ExternalId(""), [Problem("'data' must list exactly one catalog item", pointer)]
        data, pointer = data[0], pointer + "/0"
    problems = members(data, pointer, ["type", "id"])
    if problems:
        return ExternalId(""), problems
    problems = type_problem(data["type"], "catalog-item", f"{pointer}/type")
    problems += id_problem(data["id"], f"{pointer}/id")
    if problems:
        return ExternalId(""), problems
    return parse_compound_id(data["id"]), []


def parse_item_create(doc: Any) -> ItemDraft:
    data = _data(doc)
    problems = members(data, "/data", ["type", "attributes"], ["relationships"])
    problems += _resource_problems(data, "catalog-item", rules.ITEM_CREATE)
    categories, more = _categories(data.get("relationships"))
    _raise_if(problems + more)
    attributes = dict(data["attributes"])
    external = ExternalId(attributes.pop("external_id"))
    attributes.pop("integration_type", None)
    attributes.pop("catalog_type", None)
    return ItemDraft(external, {**rules.ITEM_DEFAULTS, **_not_null(attributes)}, categories)


def _categories(relationships: Any) -> tuple[list[str], list[Problem]]:
    if relationships is None:
        return [], []
    pointer = "/data/relationships"
    problems = members(relationships, pointer, [], ["categories"])
    if problems or "categories" not in relationships:
        return [], problems
    value = relationships["categories"]
    problems = members(value, f"{pointer}/categories", ["data"], ["links"])
    if problems:
        return [], problems
    data = value["data"]
    if not isinstance(data, list):
        return [], [Problem("'data' must be an array", f"{pointer}/categories/data")]
    ids: list[str] = []
    for index, linkage in enumerate(data):
        at = f"{pointer}/categories/data/{index}"
        found = members(linkage, at, ["type", "id"])
        if not found:
            found = type_problem(linkage["type"], "catalog-category", f"{at}/type")
            found += id_problem(linkage["id"], f"{at}/id")
        problems += found
        if not found:
            ids.append(linkage["id"])
    return ids, problems


def parse_update(doc: Any, resource_type: str, path_id: str) -> dict[str, Any]:
    """A PATCH document for a variant; returns the attributes to change."""
    data = _data(doc)
    problems = _update_problems(data, resource_type, path_id, rules.VARIANT_UPDATE)
    if "relationships" in data:
        problems.append(Problem("A variant cannot move to another item", "/data/relationships"))
    _raise_if(problems)
    return dict(data["attributes"])


def parse_item_update(doc: Any, path_id: str) -> tuple[dict[str, Any], list[str] | None]:
    """A PATCH document for an item: the attributes to change, and the new categories if any."""
    data = _data(doc)
    problems = _update_problems(data, "catalog-item", path_id, rules.ITEM_UPDATE)
    categories, more = _categories(data.get("relationships"))
    _raise_if(problems + more)
    relationships = data.get("relationships") or {}
    return dict(data["attributes"]), categories if "categories" in relationships else None


def _update_problems(
    data: Any, resource_type: str, path_id: str, update_rules: rules.AttributeRules
) -> list[Problem]:
    problems = members(data, "/data", ["type", "id", "attributes"], ["relationships"])
    problems += _resource_problems(data, resource_type, update_rules)
    if "id" in data and data["id"] != path_id:
        problems.append(Problem("'id' must equal the id in the URL", "/data/id"))
    return problems
