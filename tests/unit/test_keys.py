"""Presented keys: parsed and hashed once per header text (a client sends the same one on every
request), in a bounded table; a malformed header is refused every time."""

from __future__ import annotations

import pytest

from backstock.domain import keys
from backstock.domain.errors import NotAuthenticated


def test_a_header_seen_again_gives_the_same_key_without_hashing_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hashed: list[str] = []
    real = keys.hash_secret
    monkeypatch.setattr(keys, "hash_secret", lambda s: hashed.append(s) or real(s))
    header = "Klaviyo-API-Key pk_0123456789ab_the-secret-of-test-one"
    first = keys.from_authorization(header)
    assert (first.key_id, first.secret_hash) == ("0123456789ab", real("the-secret-of-test-one"))
    assert keys.from_authorization(header) is first
    assert hashed == ["the-secret-of-test-one"]
    other = keys.from_authorization("Klaviyo-API-Key pk_0123456789ab_another-secret")
    assert other.secret_hash == real("another-secret")  # same id, another secret: its own


def test_the_table_of_presented_keys_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "_PRESENTED", {})
    for n in range(3 * keys._PRESENTED_MAX):
        keys.from_authorization(f"Klaviyo-API-Key pk_0123456789ab_secret-{n}")
        assert len(keys._PRESENTED) <= keys._PRESENTED_MAX


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Bearer pk_0123456789ab_s",
        "Klaviyo-API-Key pk_short_s",
        "Klaviyo-API-Key pk_0123456789ab_",
    ],
)
def test_a_malformed_header_is_refused_every_time(header: str) -> None:
    for _ in range(2):
        with pytest.raises(NotAuthenticated):
            keys.from_authorization(header)
    assert header not in keys._PRESENTED
