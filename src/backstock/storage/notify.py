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
    no path-length limit) and names it by an empty file in ``<database>-wake/``; ``send``
    sends the topic to every name there but its own, without blocking: a full queue means
    its reader has wake-ups pending anyway, and a refused one is a process gone (its name is
    removed). A topic is only a reason to look at the database again, so a stray or lost
    datagram costs a read or the idle check's delay, never correctness. Where the abstract
    namespace is missing (not Linux), no process listens and the idle checks remain."""

    MAX_TOPIC = 200

    def __init__(self, database_file: str) -> None:
        self.directory = f"{database_file}-wake"
        self._prefix = (
            "\0backstock-"
            + hashlib.sha256(os.path.abspath(database_file).encode()).hexdigest()[:16]
        )
        self._name: str | None = None
        self._sender: socket.socket | None = None
        self._receiver: socket.socket | None = None
        self.thread: threading.Thread | None = None

    def listen(self, deliver: Callable[[str], None]) -> None:
        """Receive topics on a thread of this process from now on: ``deliver`` each."""
        if not sys.platform.startswith("linux") or self._receiver is not None:
            return
        name = f"{os.getpid()}-{secrets.token_hex(4)}"
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(f"{self._prefix}-{name}")
        os.makedirs(self.directory, exist_ok=True)
        open(os.path.join(self.directory, name), "wb").close()
        self._receiver, self._name = receiver, name

        def receive() -> None:
            while True:
                try:
                    data = receiver.recv(self.MAX_TOPIC + 1)
                except OSError:  # closed
                    return
                if not data:  # shut down (every datagram sent carries a marker byte)
                    return
                deliver(data[1:].decode(errors="replace"))

        self.thread = threading.Thread(target=receive, name="backstock-wake", daemon=True)
        self.thread.start()

    def send(self, topic: str) -> None:
        try:
            names = os.listdir(self.directory)
        except OSError:  # nobody has listened yet
            return
        data = b"w" + topic.encode()[: self.MAX_TOPIC]
        for name in names:
            if name == self._name:
                continue
            if self._sender is None:
                self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sender.setblocking(False)
                weakref.finalize(self, self._sender.close)  # a bus no one closes (the CLI's)
            try:
                self._sender.sendto(data, f"{self._prefix}-{name}")
            except BlockingIOError:  # its queue is full: it has wake-ups to read already
                continue
            except OSError:  # nobody there: a process that ended without removing its name
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.directory, name))

    def close(self) -> None:
        if self._receiver is not None and self._name is not None:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.directory, self._name))
            with contextlib.suppress(OSError):
                self._receiver.shutdown(socket.SHUT_RDWR)
            self._receiver.close()
            self._receiver = self._name = None
        if self._sender is not None:
            self._sender.close()
