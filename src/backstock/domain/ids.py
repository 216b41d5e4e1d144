"""Identifiers: compound catalog ids, job ids and the small types that keep them apart."""

from __future__ import annotations

import os
import time
from typing import NewType

AccountId = NewType("AccountId", int)
JobId = NewType("JobId", str)
ExternalId = NewType("ExternalId", str)

INTEGRATION = "$custom"
CATALOG = "$default"
SEPARATOR = ":::"
PREFIX = f"{INTEGRATION}{SEPARATOR}{CATALOG}{SEPARATOR}"
MAX_EXTERNAL_ID = 512


class InvalidCompoundId(ValueError):
    """The id is not ``$custom:::$default:::EXTERNAL_ID``."""


def shown(text: str, limit: int = 80) -> str:
    """``text`` to quote back in an error: cut to ``limit`` characters (a 30 KB id in a body is
    not worth echoing whole)."""
    return text if len(text) <= limit else text[:limit] + "…"


def parse_compound_id(compound: str) -> ExternalId:
    """Return the external id of ``$custom:::$default:::EXTERNAL_ID``.

    The external id may itself contain ``:::`` or ``/``; only the first two parts are fixed.
    """
    parts = compound.split(SEPARATOR, 2)
    if len(parts) != 3:
        raise InvalidCompoundId(
            f"'{shown(compound)}' is not a catalog id of the form $custom:::$default:::EXTERNAL_ID"
        )
    integration, catalog, external = parts
    if integration != INTEGRATION:
        raise InvalidCompoundId(f"Integration '{shown(integration)}' is not supported; use $custom")
    if catalog != CATALOG:
        raise InvalidCompoundId(f"Catalog '{shown(catalog)}' is not supported; use $default")
    check_external_id(external)
    return ExternalId(external)


def check_external_id(external: str) -> None:
    if not external:
        raise InvalidCompoundId("The external id must not be empty")
    if len(external) > MAX_EXTERNAL_ID:
        raise InvalidCompoundId(f"The external id is longer than {MAX_EXTERNAL_ID} characters")
    if "\x00" in external:
        raise InvalidCompoundId("The external id must not contain NUL characters")
    try:
        external.encode()
    except UnicodeEncodeError:
        raise InvalidCompoundId("The external id must be valid Unicode") from None


def compound_id(external: str) -> str:
    return PREFIX + external


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_job_id() -> JobId:
    """A ULID: 48 bits of milliseconds then 80 random bits, 26 Crockford base-32 characters."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return JobId("".join(reversed(chars)))
