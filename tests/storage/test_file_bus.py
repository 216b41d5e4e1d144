"""``FileBus``: SQLite's NOTIFY, datagrams between the processes (here: buses) on one file."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import time
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


def test_a_bus_closed_sends_nothing_and_removes_no_one(tmp_path: Path) -> None:
    db = str(tmp_path / "a.db")
    listener, inbox = FileBus(db), queue.Queue[str]()
    listener.listen(inbox.put)
    late = FileBus(db)
    late.send("first")  # its sender socket exists now
    assert _heard(inbox) == "first"
    late.close()
    late.send("after close")
    try:
        assert os.listdir(f"{db}-wake") == [listener._name]
        FileBus(db).send("again")
        assert _heard(inbox) == "again"
    finally:
        listener.close()


def test_a_stray_datagram_neither_wakes_nor_silences_a_listener(tmp_path: Path) -> None:
    db = str(tmp_path / "a.db")
    listener, inbox = FileBus(db), queue.Queue[str]()
    listener.listen(inbox.put)
    stray = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        for data in (b"", b"x-not-ours"):
            stray.sendto(data, f"{listener._prefix}-{listener._name}")
        FileBus(db).send("job")
        assert _heard(inbox) == "job"  # the thread lives on; the strays were not delivered
        assert inbox.empty()
    finally:
        stray.close()
        listener.close()


def test_the_same_file_by_another_path_is_the_same_bus(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.db").touch()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "alias.db").symlink_to(tmp_path / "real" / "a.db")
    listener, inbox = FileBus(str(tmp_path / "real" / "a.db")), queue.Queue[str]()
    listener.listen(inbox.put)
    try:
        # The names are in the directory the path names: the link reaches the real one's.
        FileBus(str(tmp_path / "link" / "a.db")).send("job")
        FileBus(str(tmp_path / "alias.db")).send("job 2")  # a link to the file itself
        assert [_heard(inbox), _heard(inbox)] == ["job", "job 2"]
        assert os.listdir(tmp_path / "real" / "a.db-wake") == [listener._name]
    finally:
        listener.close()


def test_a_listener_puts_back_a_name_someone_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FileBus, "CHECK_SECONDS", 0.05)
    db = str(tmp_path / "a.db")
    listener, inbox = FileBus(db), queue.Queue[str]()
    listener.listen(inbox.put)
    try:
        name = Path(f"{db}-wake") / str(listener._name)
        name.unlink()
        for _ in range(200):
            if name.exists():
                break
            time.sleep(0.01)
        FileBus(db).send("job")
        assert _heard(inbox) == "job"
    finally:
        listener.close()


def test_a_directory_that_cannot_be_made_leaves_the_process_to_its_polls(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = str(tmp_path / "a.db")
    Path(f"{db}-wake").write_text("a file where the directory would be")
    bus = FileBus(db)
    assert bus.listen(lambda _topic: None) is False  # said, not raised
    assert "cannot listen for other processes' wake-ups" in caplog.text
    bus.send("job")  # and sending does not raise either
    bus.close()
