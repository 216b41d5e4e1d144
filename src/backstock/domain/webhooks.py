"""Webhooks (Backstock's extension): a per-account URL that hears of every job's end.

A job's completion (or cancellation) writes a *delivery* in the same transaction: the outbox.
Workers POST due deliveries, signed with the account's secret, and retry failed ones with
exponential backoff, so each is delivered at least once (a receiver deduplicates on the
``Backstock-Delivery`` header).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from backstock.domain.errors import InvalidParameter

TIMEOUT_SECONDS: Final = 10.0
SIGNATURE_HEADER: Final = "Backstock-Signature"
DELIVERY_HEADER: Final = "Backstock-Delivery"


@dataclass(frozen=True, slots=True)
class Webhook:
    account: str
    url: str
    secret: str
    created_at: int


@dataclass(frozen=True, slots=True)
class Delivery:
    """One job's end, to be told (or told already) to its account's webhook."""

    pk: int
    account: str
    job_id: str
    event: str
    status: str
    """``pending``, ``delivered`` or ``failed`` (given up)."""
    attempts: int
    created_at: int
    next_attempt_at: int | None
    delivered_at: int | None
    last_status: int | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Due:
    """A delivery a worker holds for one attempt."""

    pk: int
    url: str
    secret: str
    payload: bytes
    attempts: int
    """Attempts so far, this one included."""


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidParameter("url", "A webhook URL must be an absolute http:// or https:// URL.")
    return url


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``: a receiver recomputes it
    with the secret and rejects an old ``t`` (a replay)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes) -> bool:
    """Whether ``header`` is ``body``'s signature with ``secret`` (what a receiver does)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    if not fields.get("t", "").isdigit():
        return False
    return hmac.compare_digest(signature(secret, int(fields["t"]), body), header)


def backoff_seconds(attempts: int, first: float) -> float:
    """The wait after the ``attempts``-th failed try: ``first``, doubling, at most an hour."""
    return float(min(first * 2 ** min(attempts - 1, 30), 3600.0))
