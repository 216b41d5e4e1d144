"""``FileBus``: SQLite's NOTIFY, datagrams between the processes (here: buses) on one file."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from backstock.storage.notify import FileBus

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def _heard(inbox: queue.Queue[str]) -> str:
    return inbox.get(timeout=5)


def test_a_topic_reaches_every_other_listener_on_the_file_and_not_the_sender(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "a.db")
    inboxes: list[queue.Queue[str]] = [queue.Queue() for _ in range(3)]
    buses = [FileBus(db) for _ in inboxes]
    for bus, inbox in zip(buses, inboxes, strict=True):
        bus.listen(inbox.put)
    other_file = FileBus(str(tmp_path / "b.db"))
    other_inbox: queue.Queue[str] = queue.Queue()
    other_file.listen(other_inbox.put)
    try:
        buses[0].send("01JOB")
        buses[0].send("")  # a new job: the empty topic
        for inbox in inboxes[1:]:
            assert [_heard(inbox), _heard(inbox)] == ["01JOB", ""]
        buses[1].send("x" * 1000)  # long topics are cut, not refused
        assert _heard(inboxes[0]) == "x" * FileBus.MAX_TOPIC
        assert inboxes[0].empty() or inboxes[0].get_nowait() != "01JOB"  # not its own
        assert other_inbox.empty()  # another database's processes hear nothing
    finally:
        for bus in [*buses, other_file]:
            bus.close()


def test_a_process_that_ended_without_closing_is_forgotten_at_the_next_send(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "a.db")
    script = (
        "import os, sys; from backstock.storage.notify import FileBus; "
        "FileBus(sys.argv[1]).listen(print); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", script, db], check=True)
    directory = Path(f"{db}-wake")
    assert len(os.listdir(directory)) == 1  # its name stays: it never closed
    listener, inbox = FileBus(db), queue.Queue[str]()
    listener.listen(inbox.put)
    sender = FileBus(db)
    try:
        sender.send("j")
        assert _heard(inbox) == "j"
        assert os.listdir(directory) == [listener._name]  # the dead one's name is gone
    finally:
        listener.close()
        sender.close()
    assert os.listdir(directory) == []  # close removes its name


def test_a_listener_that_does_not_read_never_blocks_a_sender(tmp_path: Path) -> None:
    db = str(tmp_path / "a.db")
    name = "1-deadbeef"
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sender = FileBus(db)
    stuck.bind(f"{sender._prefix}-{name}")  # bound, never read: its queue fills up
    os.makedirs(f"{db}-wake")
    Path(f"{db}-wake/{name}").touch()
    try:
        for _ in range(5_000):
            sender.send("job")
        assert os.listdir(f"{db}-wake") == [name]  # full is not gone
    finally:
        stuck.close()
        sender.close()


def test_a_closed_listener_stops_its_thread(tmp_path: Path) -> None:
    bus = FileBus(str(tmp_path / "a.db"))
    bus.listen(lambda _topic: None)
    assert bus.thread is not None
    assert bus.thread.is_alive()
    bus.close()
    bus.thread.join(5)
    assert not bus.thread.is_alive()
