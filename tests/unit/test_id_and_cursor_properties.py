"""Property tests for the two small grammars clients control: compound ids and page cursors."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backstock.domain.errors import InvalidParameter
from backstock.domain.ids import InvalidCompoundId, compound_id, parse_compound_id
from backstock.domain.pagination import MAX_POSITION, Cursor, decode_cursor, encode_cursor

KEY = bytes(range(16))

external_ids = st.text(min_size=1, max_size=512).filter(lambda s: "\x00" not in s)


@settings(max_examples=3000, deadline=None)
@given(external_ids)
def test_compound_ids_round_trip_with_any_reserved_character(external: str) -> None:
    """``:::``, ``/``, ``%``, spaces, ``$``: the external id is everything after the prefix."""
    assert parse_compound_id(compound_id(external)) == external


@settings(max_examples=3000, deadline=None)
@given(st.text(max_size=600))
def test_any_text_is_an_id_or_a_clear_refusal(text: str) -> None:
    try:
        external = parse_compound_id(text)
    except InvalidCompoundId as exc:
        assert str(exc)
    else:
        assert text == compound_id(external)


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(["after", "before"]), st.integers(0, MAX_POSITION))
def test_cursors_round_trip(direction: str, position: int) -> None:
    cursor = Cursor(direction, position)  # type: ignore[arg-type]
    assert decode_cursor(encode_cursor(cursor, KEY), KEY) == cursor
    assert decode_cursor("=" + encode_cursor(cursor, KEY), KEY) == cursor  # the SDK's quirk


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_a_forged_cursor_is_a_position_or_a_400(text: str) -> None:
    """A cursor carries nothing but a direction and a position in the caller's own rows (every
    query still filters by account), and anything else is refused as ``page[cursor]``."""
    try:
        cursor = decode_cursor(text, KEY)
    except InvalidParameter as exc:
        assert exc.problems[0].parameter == "page[cursor]"
    else:
        assert cursor.direction in ("after", "before")
        assert 0 <= cursor.position <= MAX_POSITION


@pytest.mark.parametrize("position", [MAX_POSITION + 1, 10**40])
def test_positions_past_bigint_are_refused(position: int) -> None:
    with pytest.raises(InvalidParameter):
        decode_cursor(encode_cursor(Cursor("after", position), KEY), KEY)


@settings(max_examples=500, deadline=None)
@given(st.integers(0, MAX_POSITION - 1), st.binary(min_size=16, max_size=16))
def test_a_cursor_reveals_no_position_and_is_its_accounts_alone(
    position: int, other: bytes
) -> None:
    """The position is enciphered with the account's key: neighbouring rows give unrelated
    cursors, the text holds no trace of the number, and another account's key reads another
    position (or a 400), never this one."""
    mine = encode_cursor(Cursor("after", position), KEY)
    assert str(position) not in base64_text(mine)
    assert encode_cursor(Cursor("after", position + 1), KEY)[2:] != mine[2:]
    if other != KEY:
        with contextlib.suppress(InvalidParameter):
            assert decode_cursor(mine, other).position != position


def base64_text(cursor: str) -> str:
    import base64

    return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("latin-1")
