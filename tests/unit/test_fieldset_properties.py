"""Property test for sparse fieldsets: ``fields[catalog-variant]=…`` and ``fields[catalog-item]=…``
with any text on the item and variant GET endpoints answer 200 with exactly the attributes asked
for, or a 400 naming the parameter; never anything else."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from backstock.domain.resources import ITEM, VARIANT
from tests.support import Api, cid, seed_catalog

ITEM_FIELDS, VARIANT_FIELDS = ITEM.fields, VARIANT.fields


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    return sqlite_url  # the parser and renderer are the same on both databases


@pytest.fixture
def seeded(api: Api) -> Api:
    seed_catalog(api, "ITEM", variants=3)
    return api


ITEM = f"/api/catalog-items/{cid('ITEM')}"
# (path and fixed parameters, the fieldset's type, its attribute names, where its resources are)
ENDPOINTS = [
    (f"/api/catalog-variants/{cid('ITEM-V1')}", {}, "catalog-variant", VARIANT_FIELDS, "data"),
    ("/api/catalog-variants", {}, "catalog-variant", VARIANT_FIELDS, "data"),
    (ITEM, {"include": "variants"}, "catalog-item", ITEM_FIELDS, "data"),
    (ITEM, {"include": "variants"}, "catalog-variant", VARIANT_FIELDS, "included"),
    ("/api/catalog-items", {"include": "variants"}, "catalog-item", ITEM_FIELDS, "data"),
    (f"{ITEM}/variants", {}, "catalog-variant", VARIANT_FIELDS, "data"),
]

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
padding = st.sampled_from(["", " ", "  ", "\t", "\u00a0", "\u2003", "\n"])
names = st.one_of(
    st.sampled_from(sorted(VARIANT_FIELDS | {"id"})),
    st.sampled_from(["SKU", "Price", "colour", "job_id", "item", "variants", "ïd", "price.x"]),
    text,
)


def padded(name: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.builds(lambda before, n, after: before + n + after, padding, name, padding)


@st.composite
def cases(draw: st.DrawFn) -> tuple[tuple[str, dict[str, str], str, frozenset[str], str], str]:
    endpoint = draw(st.sampled_from(ENDPOINTS))
    known = st.sampled_from(sorted(endpoint[3] | {"id"}))
    value = draw(
        st.one_of(
            st.lists(padded(known), max_size=6).map(",".join),  # mostly honoured
            st.lists(padded(st.one_of(known, names)), max_size=6).map(",".join),
            text,  # anything at all
        )
    )
    return endpoint, value


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cases())
def test_any_fieldset_is_exactly_honoured_or_refused_as_that_parameter(
    seeded: Api, case: tuple[tuple[str, dict[str, str], str, frozenset[str], str], str]
) -> None:
    (path, params, kind, attributes, where), value = case
    parameter = f"fields[{kind}]"
    response = seeded.get(path, params=params | {parameter: value})
    wanted = {name.strip() for name in value.split(",")} - {""}
    honoured = bool(wanted) and wanted <= attributes | {"id"}
    event(f"{response.status_code}")
    if honoured:
        assert response.status_code == 200, response.text
        resources: Any = response.json()[where]
        resources = resources if isinstance(resources, list) else [resources]
        assert resources, "nothing to check the fieldset on"
        for resource in resources:
            assert resource["type"] == kind
            assert set(resource["attributes"]) == wanted - {"id"}
    else:
        assert response.status_code == 400, response.text
        errors = response.json()["errors"]
        assert [e["source"] for e in errors] == [{"parameter": parameter}]
        assert errors[0]["status"] == "400" and errors[0]["code"] == "invalid"
