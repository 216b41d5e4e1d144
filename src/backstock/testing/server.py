"""A Backstock for tests: ``BackstockServer`` runs one in this process, ``RunningBackstock``
speaks for one already running. Both give a test what it needs besides the API: keys of fresh
accounts, fault rules, and a reset.

``BackstockServer`` is the real thing, not a mock: the API and its job worker (granian's
embedded server on a thread of its own, with its own event loop) over a SQLite file in a
temporary folder, on a free loopback port. It starts in a few tens of milliseconds (the schema
comes from ``testing.template``, not from Alembic) and, stopped, leaves no thread, process or
file behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from granian.constants import Interfaces
from granian.server.embed import Server
from limits.storage import MemoryStorage
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from backstock.bootstrap import build_app, build_services
from backstock.domain.errors import BackstockError
from backstock.domain.keys import from_authorization
from backstock.faults import RuleBook, Rules
from backstock.services.container import Services
from backstock.settings import Settings
from backstock.storage.database import Database
from backstock.storage.maintenance import MaintenanceStore
from backstock.testing import template

T = TypeVar("T")
BOTH_SCOPES = ("catalogs:read", "catalogs:write")
CALL_TIMEOUT_SECONDS = 30.0
START_TIMEOUT_SECONDS = 10.0

SERVER_DEFAULTS: Mapping[str, Any] = {
    "rate_limits": "off",
    "test_faults": "on",
    # Held jobs and lapsed leases are noticed within a tenth of a second, not five.
    "idle_check_seconds": 0.1,
    # No fsync per commit: a test server's data need not survive a power cut.
    "sqlite_synchronous": "NORMAL",
}


class TestSettings(Settings):
    """Settings from the arguments alone: the ``BACKSTOCK_*`` variables of the shell running
    the tests do not reach a test server (pass settings as arguments instead)."""

    __test__ = False  # not a test class, whatever pytest's name patterns say

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


class Faults:
    """One account's fault rules (``backstock.faults``), on a server with ``test_faults`` on.
    Each method changes one rule and keeps the others; used as a context manager, the rules are
    cleared at its end."""

    def __init__(self, book: RuleBook, account: int) -> None:
        self.book = book
        self.account = account

    def fail_next_spawns(self, count: int, status: int = 429) -> Faults:
        """The account's next ``count`` spawns (any job kind) are refused with 429 or 503, as
        Backstock refuses them for real (``Retry-After: 1``); nothing is written for them."""
        self.book.change(self.account, fail_spawns=count, fail_status=status)
        return self

    def hold_jobs(self, seconds: float) -> Faults:
        """The account's new jobs stay ``queued`` for ``seconds`` before a worker may take
        them (0: no hold)."""
        self.book.change(self.account, hold_seconds=seconds)
        return self

    def delay_items(self, ms: int) -> Faults:
        """The account's jobs are applied one item at a time, each after ``ms`` milliseconds:
        polls see them ``processing`` with growing counts (0: full speed)."""
        self.book.change(self.account, item_delay_ms=ms)
        return self

    def fail_items(self, items: Mapping[str, str]) -> Faults:
        """Items with these external ids fail in the account's jobs, each with its error code
        (``{"SKU-1": "internal_error"}``); the others are applied."""
        self.book.change(self.account, fail_items=dict(items))
        return self

    def clear(self) -> None:
        """Drop every rule of the account."""
        self.book.clear(self.account)

    @property
    def rules(self) -> Rules:
        return self.book.rules(self.account)

    def __enter__(self) -> Faults:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.clear()


class Backstock:
    """What a test needs of a Backstock besides its API."""

    url: str
    """The base URL to give a client (``KlaviyoAPI(key, test_host=server.url)``)."""

    def __init__(self) -> None:
        self.url = ""
        self._services: Services | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- services -------------------------------------------------------------------------------

    @property
    def services(self) -> Services:
        """The services over the server's database (for what this class does not wrap; run
        their coroutines with ``call``)."""
        if self._services is None:
            raise RuntimeError(self._why_no_services())
        return self._services

    def _why_no_services(self) -> str:
        return f"{self!r} is not running (not started yet, or stopped)"

    @property
    def settings(self) -> Settings:
        return self.services.settings

    def call(self, work: Callable[[], Awaitable[T]], timeout: float = CALL_TIMEOUT_SECONDS) -> T:
        """Run a service call (``lambda: server.services.accounts.list_accounts()``) on the
        server's event loop and return its result; from any thread but that loop's own."""
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RuntimeError(self._why_no_services())

        async def main() -> T:
            return await work()

        return asyncio.run_coroutine_threadsafe(main(), loop).result(timeout)

    # ---- what tests use -------------------------------------------------------------------------

    def create_key(self, account: str = "acme", scopes: tuple[str, ...] = BOTH_SCOPES) -> str:
        """A new API key (``pk_…``) of ``account``, which is created if new."""
        accounts = self.services.accounts
        return self.call(lambda: accounts.create_key(account, scopes)).key

    def account_id(self, account: str) -> int:
        """The id of the account named ``account``, or of the account of the key ``account``."""
        accounts = self.services.accounts
        if account.startswith("pk_"):
            with contextlib.suppress(BackstockError):  # not a key (of this server): a name?
                key = from_authorization(f"Klaviyo-API-Key {account}")
                return self.call(lambda: accounts.authenticate(key)).account_id
        for record in self.call(accounts.list_accounts):
            if record.name == account:
                return record.id
        raise LookupError(f"No account is named {account!r}, nor has it as a key")

    def faults(self, account: str) -> Faults:
        """The fault rules of ``account`` (its name, or one of its keys, such as the
        ``klaviyo_key`` fixture's). SQLite only; obeyed by a server with ``test_faults`` on."""
        return Faults(RuleBook.of(self.settings), self.account_id(account))

    def reset(self) -> None:
        """Empty every account's catalog, jobs and webhook deliveries and drop every fault
        rule; accounts, their keys (which keep working) and webhooks stay."""
        store = MaintenanceStore(database_of(self.services))
        self.call(store.reset)
        if self.settings.is_sqlite:
            RuleBook.of(self.settings).clear()

    # ---- life -----------------------------------------------------------------------------------

    def start(self) -> Backstock:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Backstock:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url or 'not started'})"


class BackstockServer(Backstock):
    """A real Backstock (API and job worker) in this process, on a free loopback port, over a
    new SQLite file in a temporary folder::

        with BackstockServer() as server:
            klaviyo = KlaviyoAPI(server.create_key(), test_host=server.url)

    Settings: rate limits off (``rate_limits=True`` turns Klaviyo's on), faults on demand on
    (``test_faults=False`` turns them off), idle workers look for held jobs every 0.1 s; any
    other ``Settings`` field may be given as a keyword argument. The environment's
    ``BACKSTOCK_*`` variables are not read.

    The temporary folder is made in ``directory``; by default in ``/dev/shm`` when it is a
    memory file system with room to spare (no commit or checkpoint waits for a disk another
    process keeps busy), else in the system's temporary directory."""

    def __init__(self, *, directory: str | Path | None = None, **settings: Any) -> None:
        super().__init__()
        self.directory = directory
        if "database_url" in settings:
            raise TypeError("a BackstockServer makes its own database; database_url is not taken")
        for switch in ("rate_limits", "test_faults"):
            if isinstance(settings.get(switch), bool):
                settings[switch] = "on" if settings[switch] else "off"
        self._overrides = settings
        self._folder: Path | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self.start_seconds: float | None = None
        """How long ``start`` took (database, app, listening, first answer)."""

    @property
    def folder(self) -> Path | None:
        """The temporary folder of the database (and its fault rules); gone once stopped."""
        return self._folder

    def start(self) -> BackstockServer:
        if self._folder is not None:
            raise RuntimeError(f"{self!r} is already started")
        started = time.perf_counter()
        directory = self.directory if self.directory is not None else scratch_directory()
        self._folder = Path(tempfile.mkdtemp(prefix="backstock-test-", dir=directory))
        try:
            database = self._folder / "backstock.db"
            template.create(database)
            values = {**SERVER_DEFAULTS, **self._overrides, "database_url": f"sqlite:///{database}"}
            settings = TestSettings(**values)
            app = build_app(settings)
            self._services = app.services
            self._listen(app)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.perf_counter() - started
        return self

    def stop(self) -> None:
        """Stop serving (the worker hands its jobs back), close the database and delete it.
        Safe to call more than once."""
        thread, server, loop = self._thread, self._server, self._loop
        self._thread = self._server = None
        if thread is not None and server is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended already
                loop.call_soon_threadsafe(server.stop)
            thread.join(CALL_TIMEOUT_SECONDS)
            if thread.is_alive():
                raise RuntimeError(f"{self!r} did not stop within {CALL_TIMEOUT_SECONDS} s")
        if self._services is not None:
            self._services.close()  # done by the app's shutdown already, unless it never started
        self._services = self._loop = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        self.url = ""

    def reset(self) -> None:
        super().reset()
        storage = self.services.limiter.storage
        if isinstance(storage, MemoryStorage):  # this process's rate-limit windows, too
            storage.reset()

    def __enter__(self) -> BackstockServer:
        return self.start()

    # ---- serving --------------------------------------------------------------------------------

    def _listen(self, app: Any) -> None:
        """Serve ``app`` on a free loopback port, from a thread of its own."""
        server, port = _embedded(app)
        loop = asyncio.new_event_loop()
        failed: list[BaseException] = []
        thread = threading.Thread(
            target=self._serve, args=(loop, server, failed), name="backstock-test-server"
        )
        thread.start()
        self._thread, self._server, self._loop = thread, server, loop
        url = f"http://127.0.0.1:{port}"
        if not _answers(url, thread):
            cause = failed[0] if failed else None
            raise RuntimeError(f"the test server did not start on {url}") from cause
        self.url = url

    def _serve(
        self, loop: asyncio.AbstractEventLoop, server: Server, failed: list[BaseException]
    ) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.serve())
        except BaseException as exc:  # noqa: BLE001 - the starting thread reports it
            failed.append(exc)
        finally:
            try:
                if self._services is not None:
                    loop.run_until_complete(self._services.close_loop())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()


class RunningBackstock(Backstock):
    """A Backstock started elsewhere (``backstock serve``, a container), at ``url``.

    With ``database_url`` (the database that server uses, reachable from here), keys of new
    accounts are made in it, and ``faults`` (SQLite only, the server started with
    ``BACKSTOCK_TEST_FAULTS=on``) and ``reset`` work as with a ``BackstockServer``. Without it
    only ``url`` is known: ``create_key``, ``faults`` and ``reset`` raise, and a test uses a key
    it was given."""

    def __init__(
        self,
        url: str,
        database_url: str | None = None,
        *,
        wait_seconds: float = START_TIMEOUT_SECONDS,
    ) -> None:
        super().__init__()
        self.url = url.rstrip("/")
        self.database_url = database_url
        self.wait_seconds = wait_seconds
        """How long ``start`` waits for the server to answer (it may be starting too)."""
        self._thread: threading.Thread | None = None

    def start(self) -> RunningBackstock:
        if not _answers(self.url, None, timeout=self.wait_seconds):
            raise RuntimeError(f"No Backstock answers GET {self.url}/healthz")
        if self.database_url and self._services is None:
            settings = TestSettings(database_url=self.database_url, run_worker=False)
            self._services = build_services(settings)
            loop = self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=loop.run_forever, name="backstock-test-calls", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        services, loop, thread = self._services, self._loop, self._thread
        self._services = self._loop = self._thread = None
        if services is not None and loop is not None and thread is not None:

            async def close_loop() -> None:
                await services.close_loop()

            with contextlib.suppress(Exception):  # closing what can be closed
                asyncio.run_coroutine_threadsafe(close_loop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
            services.close()

    def _why_no_services(self) -> str:
        if self.database_url is None:
            return (
                f"{self!r} was given no database URL: it cannot make keys, set faults or reset "
                "(pass database_url, or --backstock-database-url to pytest)"
            )
        return super()._why_no_services()

    def __enter__(self) -> RunningBackstock:
        return self.start()


class _HeldSocketServer(Server):
    """granian's embedded server on a socket bound beforehand (so the port is known even when
    0 is asked for), held as granian holds one off Linux: its Linux path leaves a file
    descriptor open after the server stops."""

    def __init__(self, app: Any, holder: Any) -> None:
        super().__init__(
            app, address="127.0.0.1", port=0, interface=Interfaces.ASGI, log_enabled=False
        )
        self._holder = holder

    def _init_shared_socket(self) -> None:
        self._shd = self._holder
        self._sfd = self._holder.get_fd()
        self._ssp = None


def _embedded(app: Any) -> tuple[Server, int]:
    """granian's embedded server for ``app`` on a free loopback port, and the port."""
    try:
        from granian.net import SocketSpec  # type: ignore[attr-defined]

        if not hasattr(Server, "_init_shared_socket"):
            raise AttributeError("_init_shared_socket")
        holder = SocketSpec("127.0.0.1", 0, 128).build()
    except (ImportError, AttributeError):  # another granian: its own way, one fd left after
        port = free_port()
        server = Server(
            app, address="127.0.0.1", port=port, interface=Interfaces.ASGI, log_enabled=False
        )
        return server, port
    with socket.socket(fileno=os.dup(holder.get_fd())) as probe:
        port = int(probe.getsockname()[1])
    return _HeldSocketServer(app, holder), port


def database_of(services: Services) -> Database:
    """The ``Database`` the services' stores share (bootstrap gives every store the same)."""
    found = getattr(services.jobs.store, "db", None)
    if not isinstance(found, Database):
        raise TypeError("the job store has no Database (bootstrap wires it differently now)")
    return found


def scratch_directory(room: int = 1 << 30) -> str | None:
    """``/dev/shm`` if it is writable and has ``room`` bytes free, else None (the system's
    temporary directory)."""
    shm = "/dev/shm"  # noqa: S108 - a folder of our own is made in it, mode 0700
    try:
        free = os.statvfs(shm)
    except OSError:
        return None
    if os.access(shm, os.W_OK) and free.f_bavail * free.f_frsize >= room:
        return shm
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(
    url: str, thread: threading.Thread | None, timeout: float = START_TIMEOUT_SECONDS
) -> bool:
    """Whether ``GET /healthz`` at ``url`` answers 200 within ``timeout`` (False at once if
    ``thread``, the one serving it, ends meanwhile)."""
    parts = urlsplit(url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if thread is not None and not thread.is_alive():
            return False
        connection = kind(parts.netloc, timeout=max(0.1, deadline - time.monotonic()))
        try:
            connection.request("GET", parts.path.rstrip("/") + "/healthz")
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                return thread is None or thread.is_alive()
        except OSError:
            time.sleep(0.002)
        finally:
            connection.close()
    return False
