"""A TCP proxy on loopback that a test can cut and restore, to take a database away, and that
counts the round trips made through it."""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
from collections.abc import Callable


class CuttableProxy:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self._up = threading.Event()
        self._up.set()
        self._closed = False
        self._links: list[socket.socket] = []
        self._lock = threading.Lock()
        self.round_trips = 0
        """Client sends that follow an answer (or open a connection): the times a client
        waited for the server, however its bytes were split or joined."""
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        """Drop every open connection and refuse new ones until ``restore``."""
        self._up.clear()
        with self._lock:
            for sock in self._links:
                _close(sock)
            self._links.clear()

    def restore(self) -> None:
        self._up.set()

    def close(self) -> None:
        self._closed = True
        self.cut()
        _close(self._listener)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._up.is_set():
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            with self._lock:  # a cut since the check above (``cut`` clears, then locks)
                if not self._up.is_set():
                    _close(client)
                    _close(upstream)
                    continue
                self._links += [client, upstream]
            last = ["answer"]  # which way this link's last bytes went
            for a, b, way in ((client, upstream, "ask"), (upstream, client, "answer")):
                seen = functools.partial(self._seen, last, way)
                threading.Thread(target=_pipe, args=(a, b, seen), daemon=True).start()

    def _seen(self, last: list[str], way: str) -> None:
        with self._lock:
            if way == "ask" and last[0] == "answer":
                self.round_trips += 1
            last[0] = way


def _pipe(source: socket.socket, sink: socket.socket, seen: Callable[[], None]) -> None:
    try:
        while data := source.recv(65536):
            seen()
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _close(source)
        _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
