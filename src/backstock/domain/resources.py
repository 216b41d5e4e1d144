"""The one description of each catalog resource type.

Every artifact that names a resource's attributes is derived from here: the body decoders
(``domain.bodies``: msgspec on the fast path, the problem finder on the slow one), rendering and
sparse-fieldset names (``http.render``), the table columns (``storage.schema``), the filter
fields (``domain.filters``), the bulk job kinds (``domain.jobs``) and the schemas of
``/openapi.json`` (``http.openapi``). Adding an attribute, or a resource type, is one edit here;
``tests/unit/test_resources.py`` walks every resource and shows the derived artifacts agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

AttributeKind = Literal[
    "text", "number", "policy", "boolean", "strings", "metadata", "identity", "integration",
    "catalog",
]  # fmt: skip
"""What an attribute holds: ``text`` a string without NUL; ``number`` a finite number (stored as
a float); ``policy`` 0, 1 or 2; ``strings`` an array of such strings; ``metadata`` a flat object
of at most 100 KB; ``identity`` the external id (1 to 512 characters, no NUL); ``integration``
and ``catalog`` the only values Klaviyo supports (``$custom``, ``$default``)."""

Presence = Literal["required", "optional", "absent"]
FilterKind = Literal["string", "bool", "string_list"]
Operator = Literal["equals", "any", "contains"]


@dataclass(frozen=True, slots=True)
class Attribute:
    name: str
    kind: AttributeKind
    summary: str
    create: Presence = "optional"
    """On create: ``required`` ones may not be null either; ``optional`` ones may be null."""
    update: bool = True
    """Accepted (and nullable) on update."""
    default: Any = None
    """Stored on create when the request leaves the attribute out (or sends null)."""
    stored: bool = True
    """A column and a rendered attribute; ``integration_type`` and ``catalog_type`` are only
    checked (they name the id's fixed parts)."""
    sortable: bool = False


@dataclass(frozen=True, slots=True)
class Relation:
    """A relationship of a resource.

    ``parent``: to-one, stored as a column of this resource's table (a variant's item);
    ``children``: to-many, the other side of a ``parent`` (an item's variants);
    ``links``: many-to-many through ``storage.schema.item_categories``."""

    name: str
    target: str
    """The related resource's type."""
    storage: Literal["parent", "children", "links"]
    create: Presence = "absent"
    update: bool = False
    """An update body may name the complete new set (``links`` only)."""
    legacy_name: str | None = None
    """2023-02-22's name for the same relation in a create body, as an array of one."""
    rendered: Literal["data", "links"] | None = None
    """``data``: the linkage in every document; ``links``: self and related links, and the
    linkage only with ``include``."""

    @property
    def many(self) -> bool:
        return self.storage != "parent"


@dataclass(frozen=True, slots=True)
class Filter:
    name: str
    operator: Operator
    kind: FilterKind
    target: str
    """``id`` (the resource's own id), an attribute name, or a relation name."""


@dataclass(frozen=True, slots=True)
class Resource:
    type: str
    """JSON:API type, also the path segment's singular (``catalog-variant``)."""
    noun: str
    """``variant``: in messages and as the name of this resource in ``include``."""
    plural: str
    """``variants``: the member of bulk bodies and relationships naming several."""
    table: str
    attributes: tuple[Attribute, ...]
    relations: tuple[Relation, ...] = ()
    filters: tuple[Filter, ...] = ()
    rendered_times: tuple[str, ...] = ("created", "updated")
    # Derived once, here: read on every request.
    by_name: Mapping[str, Attribute] = field(init=False, repr=False, compare=False)
    path: str = field(init=False, repr=False, compare=False)
    """``/api/catalog-variants``."""
    stored: tuple[Attribute, ...] = field(init=False, repr=False, compare=False)
    """The attributes with a column, in rendering order (``external_id`` first)."""
    fields: frozenset[str] = field(init=False, repr=False, compare=False)
    """The names ``fields[TYPE]`` may list (besides ``id``)."""

    def __post_init__(self) -> None:
        stored = tuple(a for a in self.attributes if a.stored)
        derived = {
            "by_name": MappingProxyType({a.name: a for a in self.attributes}),
            "path": f"/api/catalog-{self.plural}",
            "stored": stored,
            "fields": frozenset(a.name for a in stored) | frozenset(self.rendered_times),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    def relation(self, name: str) -> Relation:
        return next(r for r in self.relations if r.name == name)

    @property
    def parent(self) -> Relation | None:
        return next((r for r in self.relations if r.storage == "parent"), None)


def _identity() -> tuple[Attribute, ...]:
    return (
        Attribute(
            "external_id", "identity", "The id in the external system (the last part of the "
            "compound id).", create="required", update=False,
        ),
        Attribute(
            "integration_type", "integration", "`$custom`, the only integration supported.",
            update=False, stored=False,
        ),
        Attribute(
            "catalog_type", "catalog", "`$default`, the only catalog supported.", update=False,
            stored=False,
        ),
    )  # fmt: skip


def _offer(required: frozenset[str], price: str) -> tuple[Attribute, ...]:
    """The attributes items and variants share; ``required`` ones must be given on create."""

    def presence(name: str) -> Presence:
        return "required" if name in required else "optional"

    return (
        Attribute("title", "text", "The title.", presence("title")),
        Attribute("description", "text", "A description.", presence("description")),
        Attribute("price", "number", price, presence("price")),
        Attribute("url", "text", "Where it is on the shop's website.", presence("url")),
        Attribute("image_full_url", "text", "URL of a full-size image."),
        Attribute("image_thumbnail_url", "text", "URL of a thumbnail image."),
        Attribute("images", "strings", "URLs of images."),
        Attribute(
            "custom_metadata", "metadata",
            "A flat object (scalars, or arrays of scalars), at most 100 KB as JSON.",
        ),
        Attribute("published", "boolean", "Whether it is published.", default=True),
    )  # fmt: skip


_ID_FILTER = Filter("ids", "any", "string_list", "id")
_TITLE = Filter("title", "contains", "string", "title")
_PUBLISHED = Filter("published", "equals", "bool", "published")

VARIANT: Final = Resource(
    type="catalog-variant",
    noun="variant",
    plural="variants",
    table="catalog_variants",
    attributes=(
        *_identity(),
        *_offer(
            frozenset({"title", "description", "price", "url"}),
            "The price emails show for the variant.",
        ),
        Attribute("sku", "text", "The stock keeping unit.", "required"),
        Attribute(
            "inventory_policy",
            "policy",
            "1: hidden from product feeds when out of stock; 0 or 2: shown whatever the stock.",
            default=0,
        ),
        Attribute("inventory_quantity", "number", "Units in stock.", "required"),
    ),
    relations=(
        Relation(
            "item",
            "catalog-item",
            "parent",
            create="required",
            legacy_name="items",
            rendered="data",
        ),
    ),
    filters=(
        _ID_FILTER,
        Filter("item.id", "equals", "string", "item"),
        Filter("item", "equals", "string", "item"),  # 2023-02-22's name
        Filter("sku", "equals", "string", "sku"),
        _TITLE,
        _PUBLISHED,
    ),
)

ITEM: Final = Resource(
    type="catalog-item",
    noun="item",
    plural="items",
    table="catalog_items",
    attributes=(
        *_identity(),
        *_offer(frozenset({"title", "description", "url"}), "The price emails show for the item."),
    ),
    relations=(
        Relation("variants", "catalog-variant", "children", rendered="links"),
        Relation("categories", "catalog-category", "links", create="optional", update=True),
    ),
    filters=(
        _ID_FILTER,
        Filter("category.id", "equals", "string", "categories"),
        Filter("category", "equals", "string", "categories"),  # 2023-02-22's name
        _TITLE,
        _PUBLISHED,
    ),
)

CATEGORY: Final = Resource(
    type="catalog-category",
    noun="category",
    plural="categories",
    table="catalog_categories",
    attributes=(
        *_identity(),
        Attribute("name", "text", "The category's name.", "required"),
    ),
    relations=(
        Relation(
            "items", "catalog-item", "links", create="optional", update=True, rendered="links"
        ),
    ),
    filters=(
        _ID_FILTER,
        Filter("item.id", "equals", "string", "items"),
        Filter("name", "contains", "string", "name"),
    ),
    rendered_times=("updated",),
)

RESOURCES: Final = MappingProxyType({r.type: r for r in (VARIANT, ITEM, CATEGORY)})


def resource(type_: str) -> Resource:
    return RESOURCES[type_]
