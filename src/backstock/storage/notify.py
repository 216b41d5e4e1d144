"""Wake-ups across processes: PostgreSQL's ``LISTEN`` (``listen``) and, for a SQLite file,
datagrams between the processes that share it (``FileBus``). Either wakes a process's worker
when any process accepts a job, and tells its API of each job's progress (its event
streams)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import socket
import sys
import threading
import weakref
from collections.abc import Callable

import psycopg

from backstock.storage.database import postgres_url

log = logging.getLogger("backstock.worker")


async def listen(
    database_url: str, channel: str, on_notify: Callable[[str], None], stopping: asyncio.Event
) -> None:
    """Call ``on_notify`` with each notification's payload until ``stopping`` is set;
    reconnect on failure (and call ``on_notify("")`` after each connect: notifications sent
    meanwhile were lost)."""
    url = postgres_url(database_url)
    while not stopping.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(
                url, autocommit=True, connect_timeout=5
            ) as conn:
                await conn.execute(f"LISTEN {channel}")
                on_notify("")
                while not stopping.is_set():
                    async for notice in conn.notifies(timeout=0.25):  # also how soon stop is seen
                        on_notify(notice.payload)
        except psycopg.Error as exc:
            log.warning("LISTEN %s: connection lost (%s); reconnecting", channel, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 1.0)


class FileBus:
    """SQLite's ``NOTIFY``: wake-ups between the processes that serve one database file (an
    API process tells the worker process of a job it accepted; the worker tells the API
    processes' event streams of each batch).

    Each listening process binds a Unix datagram socket in Linux's abstract namespace (no file,
    no path-length limit), named from the database file's real path, and names it by an empty
    file in ``<database>-wake/``; ``send`` sends the topic to every name there but its own,
    without blocking. A full queue (Linux keeps ~10 datagrams) drops the topic; a refused one
    is a process gone, whose name is removed; a listener puts its name back if it finds it
    gone. A topic is only a reason to look at the database again, so a stray or lost datagram
    costs a read or a poll's delay (the worker's idle check, an event stream's second), never
    correctness. Where a process cannot listen (not Linux, or the directory cannot be
    written), it says so once and relies on those polls."""

    MAX_TOPIC = 200
    CHECK_SECONDS = 5.0
    """How often a listener makes sure its name is still there."""

    def __init__(self, database_file: str) -> None:
        where = os.path.realpath(database_file)  # one file, whatever path reaches it
        self.directory = f"{where}-wake"
        self._prefix = "\0backstock-" + hashlib.sha256(where.encode()).hexdigest()[:16]
        self._name: str | None = None
        self._sender: socket.socket | None = None
        self._receiver: socket.socket | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.thread: threading.Thread | None = None

    @staticmethod
    def works_here() -> bool:
        return sys.platform.startswith("linux")

    def listen(self, deliver: Callable[[str], None]) -> bool:
        """Receive topics on a thread of this process from now on, ``deliver`` each; whether
        this process listens (a failure is logged, and polls remain)."""
        if not self.works_here() or self._receiver is not None or self._closed:
            return self._receiver is not None
        name = f"{os.getpid()}-{secrets.token_hex(4)}"
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            receiver.bind(f"{self._prefix}-{name}")
            os.makedirs(self.directory, exist_ok=True)
            self._touch(name)
        except OSError as exc:
            receiver.close()
            log.warning(
                "cannot listen for other processes' wake-ups in %s (%s): new jobs and progress "
                "are noticed by polling", self.directory, exc,
            )  # fmt: skip
            return False
        receiver.settimeout(self.CHECK_SECONDS)
        self._receiver, self._name = receiver, name
        self.thread = threading.Thread(
            target=self._receive, args=(receiver, name, deliver), name="backstock-wake",
            daemon=True,
        )  # fmt: skip
        self.thread.start()
        return True

    def _touch(self, name: str) -> None:
        open(os.path.join(self.directory, name), "wb").close()

    def _receive(self, receiver: socket.socket, name: str, deliver: Callable[[str], None]) -> None:
        while not self._closed:
            try:
                data = receiver.recv(self.MAX_TOPIC + 1)
            except TimeoutError:
                if not self._closed and not os.path.exists(os.path.join(self.directory, name)):
                    with contextlib.suppress(OSError):
                        os.makedirs(self.directory, exist_ok=True)
                        self._touch(name)
                continue
            except OSError:  # closed
                return
            if data[:1] == b"w":  # the marker every topic carries; anything else is not ours
                deliver(data[1:].decode(errors="replace"))

    def send(self, topic: str) -> None:
        """Tell every other listener on the file; never raises, never blocks."""
        try:
            names = os.listdir(self.directory)
        except OSError:  # nobody has listened yet
            return
        data = b"w" + topic.encode()[: self.MAX_TOPIC]
        with self._lock:
            if self._closed:
                return
            for name in names:
                if name != self._name:
                    self._send_to(name, data)

    def _send_to(self, name: str, data: bytes) -> None:
        try:
            if self._sender is None:
                self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sender.setblocking(False)
                weakref.finalize(self, self._sender.close)  # a bus no one closes (the CLI's)
            self._sender.sendto(data, f"{self._prefix}-{name}")
        except ConnectionRefusedError:  # nobody there: a process that ended without closing
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.directory, name))
        except OSError:  # a full queue (it has wake-ups to read), or out of buffers: dropped
            pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._receiver is not None and self._name is not None:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.directory, self._name))
                with contextlib.suppress(OSError):
                    self._receiver.shutdown(socket.SHUT_RDWR)
                self._receiver.close()
                self._receiver = self._name = None
            if self._sender is not None:
                self._sender.close()
                self._sender = None
