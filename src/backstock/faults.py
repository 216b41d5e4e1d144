"""Faults on demand, for testing clients of Klaviyo's API (``BACKSTOCK_TEST_FAULTS=on``; SQLite
only, refused with PostgreSQL at start-up). Everything about them is in this module; the
production request path and worker never reach it (``bootstrap`` wires it in only when on).

- ``Prefer: code=429`` or ``code=503`` on any request answers that status as Backstock does for
  real: a JSON:API error with ``Retry-After`` (and, for 429, ``RateLimit-*`` headers).
  ``Prefer: delay=MS`` makes the request wait first (at most 60 s). Other preferences are ignored.
- Per-account rules (``backstock faults``, ``BackstockServer.faults``), kept in a JSON file beside
  the database (``<database>.faults.json``) so that every server process and the CLI share them:
  fail the account's next N spawns with 429 or 503; hold its new jobs ``queued`` for S seconds;
  apply its jobs one item at a time, each after a delay; fail chosen items with a chosen code.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from backstock.domain.errors import BackstockError, Throttled, Unavailable
from backstock.domain.jobs import ClaimedJob, NewJob
from backstock.http.app import App, error_response, send_response
from backstock.http.routes import Operation
from backstock.services.limits import LimitState
from backstock.settings import Settings

log = logging.getLogger("backstock.faults")

MAX_DELAY_MS = 60_000
STATUSES = (429, 503)


@dataclass
class Rules:
    """One account's faults."""

    fail_spawns: int = 0
    """How many of its next spawns fail, with ``fail_status``."""
    fail_status: int = 429
    hold_seconds: float = 0.0
    """Its new jobs stay ``queued`` this long."""
    item_delay_ms: int = 0
    """Its jobs apply one item per batch, each after this delay."""
    fail_items: dict[str, str] = field(default_factory=dict)
    """External ids its jobs fail, with the error code of each."""

    def __post_init__(self) -> None:
        if self.fail_status not in STATUSES:
            raise ValueError(f"a failed spawn answers 429 or 503, not {self.fail_status}")
        if self.fail_spawns < 0 or self.hold_seconds < 0 or self.item_delay_ms < 0:
            raise ValueError("counts, holds and delays cannot be negative")


class RuleBook:
    """Every account's rules, in one JSON file: read on each use (a stat and a small read),
    changed under an exclusive lock, replaced atomically."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def of(cls, settings: Settings) -> RuleBook:
        if not settings.is_sqlite:
            raise ValueError("test faults need an SQLite BACKSTOCK_DATABASE_URL")
        return cls(f"{settings.sqlite_file}.faults.json")

    def rules(self, account: int) -> Rules:
        return Rules(**self._load().get(str(account), {}))

    def change(self, account: int, **changes: Any) -> Rules:
        """Change some of the account's rules (the others stay)."""
        with self._locked():
            book = self._load()
            made = replace(Rules(**book.get(str(account), {})), **changes)
            book[str(account)] = asdict(made)
            self._save(book)
        return made

    def clear(self, account: int | None = None) -> None:
        """Drop the account's rules (every account's, without one)."""
        with self._locked():
            book = {} if account is None else self._load()
            book.pop(str(account), None)
            self._save(book)

    def take_spawn_failure(self, account: int) -> int | None:
        """The status to refuse a spawn of the account with, counting it; None: none to fail."""
        with self._locked():
            book = self._load()
            found = book.get(str(account))
            if not found or not found.get("fail_spawns"):
                return None
            found["fail_spawns"] -= 1
            self._save(book)
            return int(found.get("fail_status", 429))

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            loaded: dict[str, dict[str, Any]] = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        return loaded

    def _save(self, book: dict[str, dict[str, Any]]) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_bytes(orjson.dumps(book))
        os.replace(temporary, self.path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


class Hooks:
    """The rules, where the job service asks for them (``services.jobs.FaultHooks``)."""

    def __init__(self, book: RuleBook) -> None:
        self.book = book

    def on_spawn(self, new: NewJob) -> NewJob:
        status = self.book.take_spawn_failure(new.account)
        if status is not None:
            log.info("test fault: refusing a spawn of account %s with %d", new.account, status)
            raise _refusal(status, "a BACKSTOCK_TEST_FAULTS rule", 75)
        hold = self.book.rules(new.account).hold_seconds
        if hold:
            return replace(new, not_before=new.created_at + int(hold * 1_000_000))
        return new

    async def before_batch(self, job: ClaimedJob) -> tuple[int | None, Mapping[str, str]]:
        rules = self.book.rules(job.account_id)
        if rules.item_delay_ms:
            await asyncio.sleep(rules.item_delay_ms / 1000)
            return 1, rules.fail_items
        return None, rules.fail_items


def _refusal(status: int, why: str, limit: int) -> BackstockError:
    if status == 429:
        headers = LimitState(limit, 0, 1).headers()
        return Throttled(f"Request was throttled ({why}).", retry_after=1, headers=headers)
    return Unavailable(f"The service is unavailable ({why}).", retry_after=1, kind="fault")


def preferences(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The ``Prefer`` header's ``name=value`` preferences (RFC 7240), of every such header."""
    found: dict[str, str] = {}
    for name, value in headers:
        if name.lower() == b"prefer":
            for part in value.decode("latin-1").replace(";", ",").split(","):
                key, _, given = part.strip().partition("=")
                found[key.strip().lower()] = given.strip().strip('"')
    return found


class FaultyApp(App):
    """The API, answering ``Prefer: code=…`` and ``delay=…`` before anything else."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            wanted = preferences(scope.get("headers", []))
            delay = wanted.get("delay", "")
            if delay.isdigit():
                await asyncio.sleep(min(int(delay), MAX_DELAY_MS) / 1000)
            code = wanted.get("code", "")
            if code.isdigit() and int(code) in STATUSES:
                await self._refuse(scope, send, int(code))
                return
        await super().__call__(scope, receive, send)

    async def _refuse(self, scope: Any, send: Any, status: int) -> None:
        limit = 75
        with contextlib.suppress(BackstockError):
            route, _ = self.router.match(scope["method"], scope["path"])
            if isinstance(route, Operation):
                limits = self.services.limiter.limits(route.id, route.scope, route.limits)
                limit = int(limits.split("/")[0])
        response = error_response(_refusal(status, f"Prefer: code={status}, a test fault", limit))
        response.headers["X-Request-Id"] = uuid.uuid4().hex
        log.info("test fault: answering %s %s with %d", scope["method"], scope["path"], status)
        await send_response(send, response)
