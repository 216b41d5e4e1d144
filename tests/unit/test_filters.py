"""Tests for the Klaviyo ``filter`` parser in ``backstock.domain.filters``."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from random import Random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backstock.domain.errors import InvalidParameter
from backstock.domain.filters import (
    LIST_OPERATORS,
    MAX_FILTER_LENGTH,
    MAX_NESTING_DEPTH,
    Condition,
    FieldRule,
    FilterValue,
    Scalar,
    parse_filter,
    rules_for,
)
from backstock.domain.jobs import FILTERS as JOB_FILTERS
from backstock.domain.resources import CATEGORY, ITEM, VARIANT

VARIANT_FILTERS = rules_for(VARIANT)
ITEM_FILTERS = rules_for(ITEM)

C = Condition
A = "$custom:::$default:::A"
B = "$custom:::$default:::B"

# A rule set exercising every value kind and the other operators.
TYPED_FILTERS: Mapping[str, FieldRule] = {
    "tags": FieldRule(frozenset({"any", "contains-any", "contains-all", "has"}), "string_list"),
    "name": FieldRule(frozenset({"starts-with", "ends-with", "contains"}), "string"),
    "flag": FieldRule(frozenset({"equals"}), "bool"),
    "state": FieldRule(frozenset({"equals", "any"}), "string", frozenset({"on", "off"})),
}


def _fails(text: str, rules: Mapping[str, FieldRule] = VARIANT_FILTERS) -> str:
    with pytest.raises(InvalidParameter) as caught:
        parse_filter(text, rules)
    error = caught.value
    assert error.status == 400
    assert error.problems[0].parameter == "filter"
    return error.detail


# --------------------------------------------------------------------------- accepted input


@pytest.mark.parametrize(
    ("text", "rules", "expected"),
    [
        (
            "any(ids,['$custom:::$default:::SAMPLE-DATA-ITEM-1-VARIANT-MEDIUM'])",
            VARIANT_FILTERS,
            [C("ids", "any", ("$custom:::$default:::SAMPLE-DATA-ITEM-1-VARIANT-MEDIUM",))],
        ),
        ("equals(status,'processing')", JOB_FILTERS, [C("status", "equals", "processing")]),
        ('equals(status,"complete")', JOB_FILTERS, [C("status", "equals", "complete")]),
        (
            (
                "equals(sku,\"OBS-MD\"),any(ids,['$custom:::$default:::A','$custom:::$default:::B']),"
                "equals(published,true)"
            ),
            VARIANT_FILTERS,
            [C("sku", "equals", "OBS-MD"), C("ids", "any", (A, B)), C("published", "equals", True)],
        ),
        ('contains(title,"OceanBlue")', VARIANT_FILTERS, [C("title", "contains", "OceanBlue")]),
        (f"equals(item.id,'{A}')", VARIANT_FILTERS, [C("item.id", "equals", A)]),
        (f"equals(item,'{A}')", VARIANT_FILTERS, [C("item", "equals", A)]),
        ("equals(category.id,'c1')", ITEM_FILTERS, [C("category.id", "equals", "c1")]),
        ("equals(published,false)", ITEM_FILTERS, [C("published", "equals", False)]),
        (f'any(ids,["{A}","{B}"])', ITEM_FILTERS, [C("ids", "any", (A, B))]),
        (f"any(ids,['{A}',\"{B}\"])", ITEM_FILTERS, [C("ids", "any", (A, B))]),
    ],
)
def test_spec_and_sdk_examples(
    text: str, rules: Mapping[str, FieldRule], expected: list[Condition]
) -> None:
    assert parse_filter(text, rules) == expected


@pytest.mark.parametrize(
    "text",
    [
        "equals(sku,'a'),equals(published,true)",
        "  equals ( sku , 'a' ) ,\n\tequals( published ,true )  ",
        "and(equals(sku,'a'),equals(published,true))",
        "and(equals(sku,'a')),and(equals(published,true))",
        "and(and(equals(sku,'a')),and(and(equals(published,true))))",
        " and ( equals(sku,'a') , and( equals(published, true) ) ) ",
    ],
)
def test_whitespace_and_nesting_flatten(text: str) -> None:
    expected = [C("sku", "equals", "a"), C("published", "equals", True)]
    assert parse_filter(text, VARIANT_FILTERS) == expected


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("equals(sku,'a,)(]b')", "a,)(]b"),
        ('equals(sku,"a,)(]\'b")', "a,)(]'b"),
        ("equals(sku,'it\\'s')", "it's"),
        ('equals(sku,"say \\"hi\\"")', 'say "hi"'),
        ("equals(sku,'back\\\\slash')", "back\\slash"),
        ("equals(sku,'keep\\n')", "keep\\n"),
        ("equals(sku,'  spaced  out ')", "  spaced  out "),
        ("equals(sku,'')", ""),
        ("equals(sku,'$custom:::$default:::SKU-1/x')", "$custom:::$default:::SKU-1/x"),
        ("equals(sku,'ünïcødé ✓')", "ünïcødé ✓"),
    ],
)
def test_quoted_strings(text: str, value: str) -> None:
    assert parse_filter(text, VARIANT_FILTERS) == [C("sku", "equals", value)]


def test_list_operators_on_typed_rules() -> None:
    text = "contains-all(tags,['x','y']),any(state,['on'])"
    assert parse_filter(text, TYPED_FILTERS) == [
        C("tags", "contains-all", ("x", "y")),
        C("state", "any", ("on",)),
    ]


def test_limits_are_inclusive() -> None:
    nested = "and(" * MAX_NESTING_DEPTH + "equals(sku,'a')" + ")" * MAX_NESTING_DEPTH
    assert parse_filter(nested, VARIANT_FILTERS) == [C("sku", "equals", "a")]
    shell = "equals(sku,'')"
    longest = f"equals(sku,'{'a' * (MAX_FILTER_LENGTH - len(shell))}')"
    assert len(longest) == MAX_FILTER_LENGTH
    assert len(parse_filter(longest, VARIANT_FILTERS)) == 1


def test_job_status_accepts_every_choice() -> None:
    for status in ("queued", "processing", "complete", "cancelled"):
        assert parse_filter(f"equals(status,'{status}')", JOB_FILTERS) == [
            C("status", "equals", status)
        ]


def test_rule_sets_are_read_only_and_checked() -> None:
    assert set(VARIANT_FILTERS) == {"ids", "item.id", "item", "sku", "title", "published"}
    assert set(ITEM_FILTERS) == {"ids", "category.id", "category", "title", "published"}
    assert set(rules_for(CATEGORY)) == {"ids", "item.id", "name"}
    assert set(JOB_FILTERS) == {"status"}
    with pytest.raises(TypeError):
        VARIANT_FILTERS["extra"] = FieldRule(frozenset({"equals"}), "string")  # type: ignore[index]
    with pytest.raises(ValueError, match="greater_than"):
        FieldRule(frozenset({"greater_than"}), "string")


# --------------------------------------------------------------------------- rejected input


@pytest.mark.parametrize(
    ("text", "rules", "fragment"),
    [
        # empty / too long
        ("", VARIANT_FILTERS, "must not be empty"),
        ("  \t\n ", VARIANT_FILTERS, "must not be empty"),
        ("x" * (MAX_FILTER_LENGTH + 1), VARIANT_FILTERS, "longer than 10000 characters"),
        # unknown field / operator not allowed
        ("equals(foo,'a')", VARIANT_FILTERS, "Unsupported filter field 'foo'. Allowed: ids, item"),
        ("equals(sku,'a')", JOB_FILTERS, "Unsupported filter field 'sku'. Allowed: status"),
        ("contains(sku,'a')", VARIANT_FILTERS, "Operator 'contains' is not allowed on field 'sku'"),
        ("equals(ids,'a')", VARIANT_FILTERS, "Operator 'equals' is not allowed on field 'ids'"),
        ("any(item.id,['a'])", VARIANT_FILTERS, "Operator 'any' is not allowed on field 'item.id'"),
        ("equals(item,'a')", ITEM_FILTERS, "Unsupported filter field 'item'"),
        # wrong value type
        ("equals(published,'true')", VARIANT_FILTERS, "for 'published' must be true or false"),
        ("equals(published,1)", VARIANT_FILTERS, "for 'published' must be true or false"),
        ("equals(published,null)", VARIANT_FILTERS, "for 'published' must be true or false"),
        ("equals(sku,42)", VARIANT_FILTERS, "for 'sku' must be a quoted string"),
        ("equals(sku,true)", VARIANT_FILTERS, "for 'sku' must be a quoted string"),
        ("equals(sku,2026-01-01)", VARIANT_FILTERS, "for 'sku' must be a quoted string"),
        ("equals(sku,['a'])", VARIANT_FILTERS, "for 'sku' must be a quoted string, not a list"),
        ("any(ids,'a')", VARIANT_FILTERS, "for 'ids' must be a list of quoted strings"),
        ("any(ids,['a',1])", VARIANT_FILTERS, "Every value in the list for 'ids' must be"),
        # choices
        ("equals(status,'done')", JOB_FILTERS, "'done' for 'status' is not one of: cancelled"),
        ("equals(status,'Queued')", JOB_FILTERS, "is not one of"),
        ("any(state,['on','maybe'])", TYPED_FILTERS, "'maybe' for 'state' is not one of"),
        # bad values in the grammar
        ("equals(sku,abc)", VARIANT_FILTERS, "Unquoted filter value 'abc' at position 11"),
        ("equals(published,True)", VARIANT_FILTERS, "Unquoted filter value 'True'"),
        ("equals(sku,2026-13-01)", VARIANT_FILTERS, "Invalid datetime '2026-13-01'"),
        ("equals(sku,1e999)", VARIANT_FILTERS, "out of range"),
        ("equals(sku,1" + "0" * 5000 + ")", VARIANT_FILTERS, "out of range"),
        ("any(ids,[])", VARIANT_FILTERS, "Empty list at position 8"),
        ("any(ids,['a',])", VARIANT_FILTERS, "Unexpected character ']' at position 13"),
        ("any(ids,[['a']])", VARIANT_FILTERS, "Unexpected character '[' at position 9"),
        ("equals(sku,)", VARIANT_FILTERS, "Unexpected character ')' at position 11"),
        # unknown operators, bad structure
        ("foo(sku,'a')", VARIANT_FILTERS, "Unknown filter operator 'foo' at position 0"),
        ("or(equals(sku,'a'))", VARIANT_FILTERS, "Unknown filter operator 'or'"),
        ("equals sku,'a'", VARIANT_FILTERS, "Unexpected 'sku' at position 7; expected '('"),
        ("equals('sku','a')", VARIANT_FILTERS, "Unexpected string 'sku' at position 7"),
        ("equals(sku:x,'a')", VARIANT_FILTERS, "Invalid filter field name 'sku:x'"),
        ("equals(sku 'a')", VARIANT_FILTERS, "expected ',' after field 'sku'"),
        ("equals(sku,'a' 'b')", VARIANT_FILTERS, "Unexpected string 'b' at position 15"),
        ("'a'", VARIANT_FILTERS, "expected a filter expression"),
        ("and()", VARIANT_FILTERS, "Unexpected character ')' at position 4"),
        ("and equals(sku,'a')", VARIANT_FILTERS, "expected '(' after 'and'"),
        # separators and trailing garbage
        ("equals(sku,'a'),", VARIANT_FILTERS, "Unexpected end of filter"),
        ("equals(sku,'a'),,equals(sku,'b')", VARIANT_FILTERS, "Unexpected character ','"),
        ("equals(sku,'a') x", VARIANT_FILTERS, "Unexpected trailing input 'x' at position 16"),
        ("equals(sku,'a')equals(sku,'b')", VARIANT_FILTERS, "trailing input 'equals'"),
        ("equals(sku,'a');", VARIANT_FILTERS, "Unexpected character ';' at position 15"),
        ("equals(sku,'a')&equals(sku,'b')", VARIANT_FILTERS, "Unexpected character '&'"),
        # unbalanced parentheses, brackets and quotes
        ("equals(sku,'a'", VARIANT_FILTERS, "Unbalanced parentheses"),
        ("and(equals(sku,'a')", VARIANT_FILTERS, "Unbalanced parentheses"),
        ("equals(sku,'a'))", VARIANT_FILTERS, "unexpected character ')' at position 15"),
        ("any(ids,['a'", VARIANT_FILTERS, "Unbalanced brackets"),
        ("any(ids,['a')", VARIANT_FILTERS, "Unexpected character ')' at position 12"),
        ("equals(sku,'a)", VARIANT_FILTERS, "Unterminated string"),
        ("equals(sku,\"a')", VARIANT_FILTERS, 'quote " at position 11 is never closed'),
        ("equals(sku,'a\\')", VARIANT_FILTERS, "Unterminated string"),
        ("equals(", VARIANT_FILTERS, "Unexpected end of filter; expected a field name"),
        # nesting
        (
            "and(" * (MAX_NESTING_DEPTH + 1) + "equals(sku,'a')" + ")" * (MAX_NESTING_DEPTH + 1),
            VARIANT_FILTERS,
            "deeper than 10 levels",
        ),
        ("and(" * 2400, VARIANT_FILTERS, "deeper than 10 levels"),
        ("(" * 5000, VARIANT_FILTERS, "Unexpected character '(' at position 0"),
    ],
)
def test_rejected(text: str, rules: Mapping[str, FieldRule], fragment: str) -> None:
    assert fragment in _fails(text, rules)


def test_long_values_are_shortened_in_details() -> None:
    detail = _fails(f"equals(status,'{'z' * 500}')", JOB_FILTERS)
    assert len(detail) < 200


# --------------------------------------------------------------------------- properties

_GRAMMAR_BITS = [
    "equals",
    "any",
    "and",
    "contains",
    "(",
    ")",
    "[",
    "]",
    ",",
    "'",
    '"',
    "\\",
    " ",
    "sku",
    "ids",
    "published",
    "true",
    "null",
    "-1.5e3",
    "2026-01-01T00:00:00Z",
    "'a'",
    "x",
]
_grammar_soup = st.lists(st.sampled_from(_GRAMMAR_BITS), max_size=40).map("".join)


def _outcome(text: str, rules: Mapping[str, FieldRule]) -> list[Condition] | InvalidParameter:
    try:
        return parse_filter(text, rules)
    except InvalidParameter as error:
        return error


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), _grammar_soup))
def test_any_text_either_parses_or_is_invalid_parameter(text: str) -> None:
    for rules in (VARIANT_FILTERS, TYPED_FILTERS):
        outcome = _outcome(text, rules)  # anything but InvalidParameter propagates and fails
        if isinstance(outcome, InvalidParameter):
            assert outcome.status == 400
            assert outcome.problems[0].parameter == "filter"
            assert outcome.detail
        else:
            assert all(isinstance(condition, Condition) for condition in outcome)


_OFFSETS = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
_SCALARS: dict[str, st.SearchStrategy[Scalar]] = {
    "string": st.text(max_size=20),
    "string_list": st.text(max_size=20),
    "bool": st.booleans(),
    "number": st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False)),
    "datetime": st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1), timezones=_OFFSETS
    ),
}


def _value_strategy(rule: FieldRule, operator: str) -> st.SearchStrategy[FilterValue]:
    scalar: st.SearchStrategy[Scalar] = _SCALARS[rule.kind]
    if rule.choices is not None:
        scalar = st.sampled_from(sorted(rule.choices))
    if operator in LIST_OPERATORS:
        return st.lists(scalar, min_size=1, max_size=4).map(tuple)
    return scalar


def _condition_strategy(rules: Mapping[str, FieldRule]) -> st.SearchStrategy[Condition]:
    """Any valid condition for ``rules``: every allowed field/operator pair with a fitting value."""
    return st.one_of(
        [
            st.builds(Condition, st.just(field), st.just(operator), _value_strategy(rule, operator))
            for field, rule in sorted(rules.items())
            for operator in sorted(rule.operators)
        ]
    )


_RULE_SETS = [VARIANT_FILTERS, ITEM_FILTERS, JOB_FILTERS, TYPED_FILTERS]
_CASES = st.one_of(
    [
        st.tuples(st.just(rules), st.lists(_condition_strategy(rules), min_size=1, max_size=5))
        for rules in _RULE_SETS
    ]
)
_SPACES = ["", "", " ", "  ", "\t", "\r\n "]


def _render_scalar(rnd: Random, value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, datetime):
        text = value.isoformat()
        return rnd.choice([text, f"'{text}'", f'"{text}"'])
    assert isinstance(value, str)
    quote = rnd.choice(["'", '"'])
    escaped = "".join("\\" + char if char in (quote, "\\") else char for char in value)
    return quote + escaped + quote


def _join(rnd: Random, tokens: list[str]) -> str:
    """Glue tokens with random whitespace."""
    return "".join(token + rnd.choice(_SPACES) for token in tokens)


def _render(rnd: Random, condition: Condition) -> str:
    value = condition.value
    if isinstance(value, tuple):
        items = [_render_scalar(rnd, item) for item in value]
        separated = [part for item in items for part in (item, ",")][:-1]
        rendered = _join(rnd, ["[", *separated, "]"])
    else:
        rendered = _render_scalar(rnd, value)
    text = _join(rnd, [condition.operator, "(", condition.field, ",", rendered, ")"])
    for _ in range(rnd.choice([0, 0, 1, 3])):
        text = _join(rnd, ["and", "(", text, ")"])
    return text


def _typed(conditions: list[Condition]) -> list[tuple[str, str, object]]:
    def kind(value: FilterValue) -> object:
        if isinstance(value, tuple):
            return tuple(type(item) for item in value)
        return type(value)

    return [(c.field, c.operator, kind(c.value)) for c in conditions]


@settings(max_examples=300, deadline=None)
@given(_CASES, st.integers(min_value=0, max_value=2**32))
def test_round_trip(case: tuple[Mapping[str, FieldRule], list[Condition]], seed: int) -> None:
    rules, conditions = case
    rnd = Random(seed)  # quote style, whitespace and and() nesting of the rendering
    text = rnd.choice(_SPACES) + ",".join(_render(rnd, condition) for condition in conditions)
    if rnd.random() < 0.3:
        text = f"and({text})"
    parsed = parse_filter(text, rules)
    assert parsed == conditions, text
    assert _typed(parsed) == _typed(conditions)
