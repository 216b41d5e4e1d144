r"""Parse and validate Klaviyo-style ``filter`` query parameters.

A filter is one or more conditions joined by commas (meaning AND), for example
``equals(sku,"OBS-MD"),any(ids,['$custom:::$default:::A']),equals(published,true)``.

Grammar (EBNF). Whitespace between tokens is ignored; inside quoted strings it is kept::

    filter     = expression , { "," , expression } ;
    expression = and-group | condition ;
    and-group  = "and" , "(" , expression , { "," , expression } , ")" ;
    condition  = operator , "(" , field , "," , value , ")" ;
    operator   = "equals" | "any" | "contains" | "contains-any" | "contains-all"
               | "starts-with" | "ends-with" | "greater-than" | "greater-or-equal"
               | "less-than" | "less-or-equal" | "has" ;
    field      = field-char , { field-char } ;
    field-char = letter | digit | "_" | "." | "-" ;
    value      = scalar | list ;
    list       = "[" , scalar , { "," , scalar } , "]" ;     (* never empty *)
    scalar     = string | number | "true" | "false" | "null" | datetime ;
    string     = "'" , { char - ( "'" | "\" ) | escape } , "'"
               | '"' , { char - ( '"' | "\" ) | escape } , '"' ;
    escape     = "\" , ( "'" | '"' | "\" ) ;     (* "\" before any other char is kept as is *)
    number     = [ "-" ] , digits , [ "." , digits ] , [ ( "e" | "E" ) , [ "+" | "-" ] , digits ] ;
    datetime   = digit , digit , digit , digit , "-" , digit , digit , "-" , digit , digit ,
                 { letter | digit | ":" | "+" | "-" | "." } ;  (* as datetime.fromisoformat *)

Outside quotes only ASCII letters, digits and ``_ . - : +`` form words; any other character
(``;``, ``&``, ``=``, non-ASCII, ...) is rejected. Bare words other than operator names, field
names, ``true``/``false``/``null``, numbers and datetimes are rejected: strings must be quoted.
Datetimes without an offset are taken as UTC; values are returned as aware ``datetime``.

Limits: at most ``MAX_FILTER_LENGTH`` characters and ``MAX_NESTING_DEPTH`` nested ``and(...)``.
Positions in error details are 0-based character offsets into the filter text.

``parse_filter`` checks the parsed conditions against a ``FieldRule`` per field and returns
them flattened (``and(...)`` groups disappear). Every failure, syntactic or semantic, raises
``InvalidParameter("filter", detail)``; no other exception escapes for any input string.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from types import MappingProxyType
from typing import Final, Literal, TypeAlias

from backstock.domain.errors import InvalidParameter
from backstock.domain.resources import Resource

__all__ = [
    "LIST_OPERATORS",
    "MAX_FILTER_LENGTH",
    "MAX_NESTING_DEPTH",
    "OPERATORS",
    "Condition",
    "FieldKind",
    "FieldRule",
    "FilterValue",
    "Scalar",
    "parse_filter",
    "rules_for",
]

Scalar: TypeAlias = str | int | float | bool | datetime | None
FilterValue: TypeAlias = Scalar | tuple[Scalar, ...]
FieldKind: TypeAlias = Literal["string", "bool", "string_list"]

MAX_FILTER_LENGTH: Final = 10_000
MAX_NESTING_DEPTH: Final = 10
OPERATORS: Final = frozenset(
    {
        "equals",
        "any",
        "contains",
        "contains-any",
        "contains-all",
        "starts-with",
        "ends-with",
        "greater-than",
        "greater-or-equal",
        "less-than",
        "less-or-equal",
        "has",
    }
)
#: Operators whose value must be a non-empty list of the field's scalar kind.
LIST_OPERATORS: Final = frozenset({"any", "contains-any", "contains-all"})


@dataclass(frozen=True, slots=True)
class Condition:
    """One ``operator(field,value)`` test; list values are tuples."""

    field: str
    operator: str
    value: FilterValue


@dataclass(frozen=True, slots=True)
class FieldRule:
    """What a field accepts: its operators, the kind of its values and optional string choices.

    Operators in ``LIST_OPERATORS`` take a non-empty list whose items have the scalar kind
    (``string_list`` means string items); all others take one scalar of that kind; ``null`` is
    never accepted.
    """

    operators: frozenset[str]
    kind: FieldKind
    choices: frozenset[str] | None = None

    def __post_init__(self) -> None:
        unknown = self.operators - OPERATORS
        if unknown:
            raise ValueError(f"Unknown filter operators in rule: {sorted(unknown)}")


@cache
def rules_for(resource: Resource) -> Mapping[str, FieldRule]:
    """The filter fields of a resource's lists, from its description."""
    return MappingProxyType(
        {f.name: FieldRule(frozenset({f.operator}), f.kind) for f in resource.filters}
    )


# --------------------------------------------------------------------------- public entry


def parse_filter(text: str, rules: Mapping[str, FieldRule]) -> list[Condition]:
    """Parse and validate; return the AND-ed conditions, flattened (and() nests flattened)."""
    if len(text) > MAX_FILTER_LENGTH:
        raise _error(f"The filter is longer than {MAX_FILTER_LENGTH} characters")
    if not text.strip():
        raise _error("The filter must not be empty")
    conditions = _Parser(_tokenize(text)).parse()
    return [_validate(condition, rules) for condition in conditions]


def _error(detail: str) -> InvalidParameter:
    return InvalidParameter("filter", detail)


def _show(value: str, limit: int = 60) -> str:
    """Quote a piece of user input for an error detail, shortened if long."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


# --------------------------------------------------------------------------- tokenizer


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # one of "(", ")", "[", "]", ",", "word", "string", "end"
    text: str  # the source text; for strings the decoded content
    pos: int


_PUNCTUATION: Final = frozenset("()[],")
_QUOTES: Final = frozenset("'\"")
_ESCAPABLE: Final = frozenset("'\"\\")
_WORD_CHARS: Final = frozenset(string.ascii_letters + string.digits + "_.-:+")


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        token, pos = _next_token(text, pos)
        if token is not None:
            tokens.append(token)
    tokens.append(_Token("end", "", len(text)))
    return tokens


def _next_token(text: str, pos: int) -> tuple[_Token | None, int]:
    char = text[pos]
    if char.isspace():
        return None, pos + 1
    if char in _PUNCTUATION:
        return _Token(char, char, pos), pos + 1
    if char in _QUOTES:
        return _read_string(text, pos)
    if char in _WORD_CHARS:
        return _read_word(text, pos)
    raise _error(f"Unexpected character {char!r} at position {pos}")


def _read_word(text: str, start: int) -> tuple[_Token, int]:
    end = start
    while end < len(text) and text[end] in _WORD_CHARS:
        end += 1
    return _Token("word", text[start:end], start), end


def _read_string(text: str, start: int) -> tuple[_Token, int]:
    quote = text[start]
    parts: list[str] = []
    pos = start + 1
    while pos < len(text):
        char = text[pos]
        if char == quote:
            return _Token("string", "".join(parts), start), pos + 1
        if char == "\\" and pos + 1 < len(text) and text[pos + 1] in _ESCAPABLE:
            pos += 1
            char = text[pos]
        parts.append(char)
        pos += 1
    raise _error(f"Unterminated string: the quote {quote} at position {start} is never closed")


# --------------------------------------------------------------------------- parser

_FIELD_RE: Final = re.compile(r"[A-Za-z0-9_.\-]+")
_INT_RE: Final = re.compile(r"-?[0-9]+")
_NUMBER_RE: Final = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_DATE_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_KEYWORDS: Final[Mapping[str, bool | None]] = MappingProxyType(
    {"true": True, "false": False, "null": None}
)
_CLOSERS: Final = MappingProxyType({")": "parentheses", "]": "brackets"})
_EXPECTED: Final = MappingProxyType(
    {"(": "'('", ")": "')'", "]": "',' or ']'", ",": "','", "word": "a name"}
)


class _Parser:
    """Recursive descent over the token list; recursion only through ``and(...)``."""

    def __init__(self, tokens: list[_Token]) -> None:
        self._tokens = tokens
        self._index = 0
        self._conditions: list[Condition] = []

    def parse(self) -> list[Condition]:
        self._expression_list(depth=0)
        token = self._peek()
        if token.kind != "end":
            raise _trailing(token)
        return self._conditions

    def _peek(self) -> _Token:
        return self._tokens[self._index]

    def _advance(self) -> _Token:
        token = self._tokens[self._index]
        if token.kind != "end":
            self._index += 1
        return token

    def _expect(self, kind: str, expected: str | None = None) -> _Token:
        token = self._advance()
        if token.kind == "end" and kind in _CLOSERS:
            raise _error(f"Unbalanced {_CLOSERS[kind]}: the filter ended before a closing {kind!r}")
        if token.kind != kind:
            raise _unexpected(token, expected or _EXPECTED[kind])
        return token

    def _expression_list(self, depth: int) -> None:
        self._expression(depth)
        while self._peek().kind == ",":
            self._advance()
            self._expression(depth)

    def _expression(self, depth: int) -> None:
        name = self._expect("word", "a filter expression such as equals(field,value)")
        if name.text == "and":
            self._and_group(name, depth + 1)
        else:
            self._condition(name)

    def _and_group(self, name: _Token, depth: int) -> None:
        if depth > MAX_NESTING_DEPTH:
            raise _error(f"Filter nesting is deeper than {MAX_NESTING_DEPTH} levels")
        self._expect("(", f"'(' after 'and' at position {name.pos}")
        self._expression_list(depth)
        self._expect(")", "',' or ')'")

    def _condition(self, name: _Token) -> None:
        if name.text not in OPERATORS:
            allowed = ", ".join(sorted(OPERATORS | {"and"}))
            raise _error(
                f"Unknown filter operator {_show(name.text)} at position {name.pos}. "
                f"Known: {allowed}"
            )
        self._expect("(", f"'(' after {name.text!r} at position {name.pos}")
        field = self._field()
        self._expect(",", f"',' after field {field!r}")
        value = self._value()
        self._expect(")", "')'")
        self._conditions.append(Condition(field, name.text, value))

    def _field(self) -> str:
        token = self._expect("word", "a field name")
        if not _FIELD_RE.fullmatch(token.text):
            raise _error(f"Invalid filter field name {_show(token.text)} at position {token.pos}")
        return token.text

    def _value(self) -> FilterValue:
        if self._peek().kind == "[":
            return self._list()
        return self._scalar()

    def _list(self) -> tuple[Scalar, ...]:
        opening = self._advance()
        if self._peek().kind == "]":
            raise _error(f"Empty list at position {opening.pos}: a filter list needs a value")
        items = [self._scalar()]
        while self._peek().kind == ",":
            self._advance()
            items.append(self._scalar())
        self._expect("]")
        return tuple(items)

    def _scalar(self) -> Scalar:
        token = self._advance()
        if token.kind == "string":
            return token.text
        if token.kind == "word":
            return _bare_value(token)
        raise _unexpected(token, "a filter value")


def _describe(token: _Token) -> str:
    if token.kind == "string":
        return f"string {_show(token.text)}"
    if token.kind == "word":
        return _show(token.text)
    return f"character {token.text!r}"


def _unexpected(token: _Token, expected: str) -> InvalidParameter:
    if token.kind == "end":
        return _error(f"Unexpected end of filter; expected {expected}")
    return _error(f"Unexpected {_describe(token)} at position {token.pos}; expected {expected}")


def _trailing(token: _Token) -> InvalidParameter:
    if token.kind == ")":
        return _error(f"Unbalanced parentheses: unexpected character ')' at position {token.pos}")
    return _error(
        f"Unexpected trailing input {_describe(token)} at position {token.pos}; "
        "expected ',' or the end of the filter"
    )


# --------------------------------------------------------------------------- bare values


def _bare_value(token: _Token) -> Scalar:
    text = token.text
    if text in _KEYWORDS:
        return _KEYWORDS[text]
    if _NUMBER_RE.fullmatch(text):
        return _parse_number(token)
    if _DATE_RE.match(text):
        parsed = _parse_datetime(text)
        if parsed is None:
            raise _error(f"Invalid datetime {_show(text)} at position {token.pos}")
        return parsed
    raise _error(
        f"Unquoted filter value {_show(text)} at position {token.pos}; quote strings with ' or \""
    )


def _parse_number(token: _Token) -> int | float:
    number: int | float
    try:
        number = int(token.text) if _INT_RE.fullmatch(token.text) else float(token.text)
    except ValueError:  # int() refuses numbers with thousands of digits
        number = math.inf
    if isinstance(number, float) and not math.isfinite(number):
        raise _error(f"Number at position {token.pos} is out of range")
    return number


def _parse_datetime(text: str) -> datetime | None:
    """ISO-8601 text to an aware datetime (naive means UTC); None if it is not one."""
    if not _DATE_RE.match(text):
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- validation


def _as_string(value: Scalar) -> str | None:
    return value if isinstance(value, str) else None


def _as_bool(value: Scalar) -> bool | None:
    return value if isinstance(value, bool) else None


# Each converter returns the accepted value, or None when the value has the wrong kind
# (null is never an accepted filter value, so None can double as "rejected").
_CONVERTERS: Final[Mapping[str, Callable[[Scalar], Scalar]]] = MappingProxyType(
    {
        "string": _as_string,
        "string_list": _as_string,
        "bool": _as_bool,
    }
)
_KIND_NAMES: Final = MappingProxyType(
    {
        "string": "a quoted string",
        "string_list": "a quoted string",
        "bool": "true or false",
    }
)
_LIST_NAMES: Final = MappingProxyType(
    {
        "string": "quoted strings",
        "string_list": "quoted strings",
        "bool": "true/false values",
    }
)


def _validate(condition: Condition, rules: Mapping[str, FieldRule]) -> Condition:
    field, operator = condition.field, condition.operator
    rule = rules.get(field)
    if rule is None:
        allowed = ", ".join(sorted(rules)) or "(none)"
        raise _error(f"Unsupported filter field {_show(field)}. Allowed: {allowed}")
    if operator not in rule.operators:
        allowed = ", ".join(sorted(rule.operators))
        raise _error(f"Operator {operator!r} is not allowed on field {field!r}. Allowed: {allowed}")
    return Condition(field, operator, _check_value(condition, rule))


def _check_value(condition: Condition, rule: FieldRule) -> FilterValue:
    field, value = condition.field, condition.value
    if condition.operator in LIST_OPERATORS:
        if not isinstance(value, tuple):
            raise _error(
                f"Filter value for {field!r} must be a list of {_LIST_NAMES[rule.kind]}, "
                "e.g. ['a','b']"
            )
        return tuple(_check_scalar(field, rule, item, in_list=True) for item in value)
    if isinstance(value, tuple):
        raise _error(f"Filter value for {field!r} must be {_KIND_NAMES[rule.kind]}, not a list")
    return _check_scalar(field, rule, value, in_list=False)


def _check_scalar(field: str, rule: FieldRule, value: Scalar, *, in_list: bool) -> Scalar:
    converted = _CONVERTERS[rule.kind](value)
    if converted is None:
        where = "Every value in the list" if in_list else "Filter value"
        raise _error(f"{where} for {field!r} must be {_KIND_NAMES[rule.kind]}")
    choices = rule.choices
    if choices is not None and isinstance(converted, str) and converted not in choices:
        allowed = ", ".join(sorted(choices))
        raise _error(f"Filter value {_show(converted)} for {field!r} is not one of: {allowed}")
    return converted
