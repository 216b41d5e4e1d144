"""Per-account, per-operation rate limits: a burst window and a steady window at once.

Built on the ``limits`` library with moving windows (exact: a burst that straddles a second
boundary is still held to the burst limit). Memory storage serves one process; with
``BACKSTOCK_REDIS_URL`` every API process shares one Redis, so N processes admit what one would.

If Redis cannot be reached the limiter **fails open**: requests are served unlimited, the log
says so once per outage, and ``/readyz`` reports it. Refusing all traffic because a counter
store is down would turn a Redis outage into a full outage of the catalog. While Redis is down
it is tried again at most every ``RETRY_SECONDS``, so requests do not each wait for a timeout.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from backstock.domain.errors import Throttled
from backstock.domain.ids import AccountId
from backstock.settings import Settings

log = logging.getLogger("backstock.limits")
RETRY_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class LimitState:
    """The tightest window after this request: what the ``RateLimit-*`` headers say."""

    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }


SEED_LIMITS = {
    "bulk_update_catalog_variants": "75/second;700/minute",
    "get_bulk_update_variants_job": "350/second;3500/minute",
}
"""The limits the seeds give their two operations: where they differ from Klaviyo's newest
document, the seeds win."""


class Limiter:
    """Each operation's limits, first found of: ``BACKSTOCK_OPERATION_LIMITS`` naming it;
    ``BACKSTOCK_WRITE_LIMITS`` or ``BACKSTOCK_READ_LIMITS`` (every write's or read's); the
    seeds' (``SEED_LIMITS``); Klaviyo's own (``x-klaviyo-ratelimit``, given by the route)."""

    def __init__(self, settings: Settings, storage: Storage | None = None) -> None:
        self.enabled = settings.rate_limits == "on"
        self._by_scope = {
            "catalogs:write": settings.write_limits,
            "catalogs:read": settings.read_limits,
        }
        self._by_operation = settings.operation_limit_map
        self._windows: dict[str, list[RateLimitItem]] = {}
        if storage is None:
            storage = _storage(settings)
        self.storage = storage
        self._strategy = MovingWindowRateLimiter(storage)
        self.degraded = False
        self._retry_at = 0.0
        self._failure_windows = parse_many(settings.auth_failure_limits)
        self._failing: dict[str, float] = {}
        """Addresses with a failed authentication lately (when): only they are checked."""

    def limits(self, operation: str, scope: str, klaviyo: str) -> str:
        """The limits that apply to an operation (``75/second;750/minute``)."""
        return (
            self._by_operation.get(operation)
            or self._by_scope[scope]
            or SEED_LIMITS.get(operation)
            or klaviyo
        )

    def hit(
        self, account: AccountId, operation: str, limits: str, cost: int = 1
    ) -> LimitState | None:
        """Count a request (``cost`` units of the windows); raise ``Throttled`` (429) if a
        window is full."""
        if not self.enabled or (self.degraded and time.monotonic() < self._retry_at):
            return None
        windows = self._windows.get(limits)
        if windows is None:
            windows = self._windows[limits] = parse_many(limits)
        try:
            return self._hit(windows, str(account), operation, cost)
        except Throttled:
            raise
        except Exception as exc:  # noqa: BLE001 - any storage failure means fail open
            self._fail_open(exc)
            return None

    def _hit(
        self, windows: list[RateLimitItem], account: str, operation: str, cost: int
    ) -> LimitState:
        # Test every window before counting in any, so a refused request counts nowhere.
        for window in windows:
            if not self._strategy.test(window, account, operation, cost=cost):
                self._refuse(window, account, operation)
        states = []
        for window in windows:
            if not self._strategy.hit(window, account, operation, cost=cost):
                self._refuse(window, account, operation)  # lost a race with another process
            reset, remaining = self._strategy.get_window_stats(window, account, operation)
            states.append(LimitState(window.amount, remaining, _seconds_until(reset)))
        if self.degraded:
            self.degraded = False
            log.warning("rate-limit storage is reachable again; limits are enforced")
        return min(states, key=lambda s: (s.remaining, -s.reset_seconds))

    def check_failures(self, address: str) -> None:
        """Refuse (429) a client address that has failed authentication too often, before its
        key is looked up."""
        if not self.enabled or address not in self._failing:
            return
        if time.monotonic() - self._failing[address] > 60:
            del self._failing[address]
            return
        try:
            for window in self._failure_windows:
                if not self._strategy.test(window, "auth-failures", address):
                    self._refuse(window, "auth-failures", address, "failed authentications")
        except Throttled:
            raise
        except Exception as exc:  # noqa: BLE001 - any storage failure means fail open
            self._fail_open(exc)

    def count_failure(self, address: str) -> None:
        if not self.enabled:
            return
        if len(self._failing) > 10_000:  # bounded: the oldest are forgotten
            self._failing.clear()
        self._failing[address] = time.monotonic()
        try:
            for window in self._failure_windows:
                self._strategy.hit(window, "auth-failures", address)
        except Exception as exc:  # noqa: BLE001
            self._fail_open(exc)

    def _refuse(
        self, window: RateLimitItem, account: str, operation: str, what: str = "this operation"
    ) -> None:
        reset, _ = self._strategy.get_window_stats(window, account, operation)
        wait = _seconds_until(reset)
        raise Throttled(
            f"Rate limit of {window} exceeded for {what}; retry in {wait} s.",
            retry_after=wait,
            headers=LimitState(window.amount, 0, wait).headers(),
        )

    def _fail_open(self, exc: Exception) -> None:
        if not self.degraded:
            log.error("rate-limit storage unreachable (%s); serving without limits", exc)
        self.degraded = True
        self._retry_at = time.monotonic() + RETRY_SECONDS

    def check(self) -> bool:
        """Whether the storage answers (for ``/readyz``)."""
        try:
            return bool(self.storage.check())
        except Exception:  # noqa: BLE001
            return False


def _storage(settings: Settings) -> Storage:
    if not settings.redis_url:
        return MemoryStorage()
    timeout = settings.redis_timeout_seconds
    storage = storage_from_string(
        settings.redis_url,
        key_prefix=settings.redis_key_prefix,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
    assert isinstance(storage, Storage)
    return storage


def _seconds_until(reset: float) -> int:
    """Whole seconds, at least 1: Klaviyo's SDK parses ``Retry-After`` with ``int()``."""
    return max(1, math.ceil(reset - time.time()))
