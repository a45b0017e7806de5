"""One local server per data dir, shared: which `sessionflow serve` runs on it, where it
listens, and which processes use it.

- `DATA_DIR/server.json` names the server (pid, URL once it listens, and whether it exits when
  unused). A record whose process is gone is as good as none.
- `DATA_DIR/clients/PID` is one file per CLI process using it.
- `DATA_DIR/server.lock` (flock) is held for every decision: to reuse or start a server, to
  leave it, and for the server to decide that nobody uses it any more. So a CLI never joins a
  server that is deciding to stop, and two CLIs never start two servers.

A process is known by its pid and its start time (from /proc), so a pid the system handed to
another process since does not count as the one recorded."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from sessionflow.processes import alive

RECORD = "server.json"
LOCK = "server.lock"
CLIENTS = "clients"


@dataclass(frozen=True)
class ServerRecord:
    pid: int
    started: str  # the process's start time, as /proc gives it
    url: str | None  # None while it starts
    while_used: bool  # it stops by itself once no process uses it


def start_time(pid: int) -> str | None:
    """The start time of process pid (clock ticks since boot), or None if it is not running."""
    if not alive(pid):
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def same_process(pid: int, started: str) -> bool:
    return start_time(pid) == started


@contextlib.contextmanager
def locked(data_dir: Path) -> Iterator[None]:
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def read_record(data_dir: Path) -> ServerRecord | None:
    """The server recorded for data_dir, if its process still runs."""
    try:
        data = json.loads((data_dir / RECORD).read_text())
        record = ServerRecord(
            pid=int(data["pid"]),
            started=str(data["started"]),
            url=data.get("url") or None,
            while_used=bool(data.get("while_used")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if same_process(record.pid, record.started) else None


def write_record(data_dir: Path, record: ServerRecord) -> None:
    path = data_dir / RECORD
    part = path.with_suffix(".json.part")
    part.write_text(json.dumps(asdict(record)))
    os.replace(part, path)  # readers see the old record or the new one, never half of one


def clear_record(data_dir: Path, pid: int) -> None:
    """Forget the record if it is pid's (a later server's record stays)."""
    try:
        data = json.loads((data_dir / RECORD).read_text())
    except (OSError, ValueError):
        return
    if isinstance(data, dict) and data.get("pid") == pid:
        with contextlib.suppress(FileNotFoundError):
            (data_dir / RECORD).unlink()


def own_record(data_dir: Path, url: str | None, *, while_used: bool) -> ServerRecord:
    """This process's record, written (call with the lock held)."""
    pid = os.getpid()
    record = ServerRecord(pid=pid, started=start_time(pid) or "", url=url, while_used=while_used)
    write_record(data_dir, record)
    return record


def add_client(data_dir: Path, pid: int) -> None:
    folder = data_dir / CLIENTS
    folder.mkdir(exist_ok=True)
    (folder / str(pid)).write_text(start_time(pid) or "")


def remove_client(data_dir: Path, pid: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        (data_dir / CLIENTS / str(pid)).unlink()


def clients(data_dir: Path) -> list[int]:
    """The processes using the server now; files of processes that are gone are removed."""
    users = []
    try:
        entries = list((data_dir / CLIENTS).iterdir())
    except FileNotFoundError:
        return []
    for entry in entries:
        try:
            pid, started = int(entry.name), entry.read_text()
        except (OSError, ValueError):
            continue
        if same_process(pid, started):
            users.append(pid)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
    return users


def serving(data_dir: Path, url: str, *, while_used: bool) -> None:
    """The server of data_dir listens at url: record it, unless another live one is recorded
    (a second `sessionflow serve` on the same data dir leaves the first one's record)."""
    with locked(data_dir):
        current = read_record(data_dir)
        if while_used or current is None or current.pid == os.getpid():
            own_record(data_dir, url, while_used=while_used)


def forget(data_dir: Path) -> None:
    """This server is stopping: new CLIs must not join it."""
    with locked(data_dir):
        clear_record(data_dir, os.getpid())


def stop_when_unused(data_dir: Path, interval: float = 0.2) -> threading.Thread:
    """In a server a CLI started: SIGTERM this process once no process uses it (checked every
    interval), however its users ended (a double Ctrl-C leaves without a word). A user that
    leaves last stops it itself, first clearing the record; then this watch just ends."""

    def watch() -> None:
        me = os.getpid()
        while True:
            time.sleep(interval)
            with locked(data_dir):
                record = read_record(data_dir)
                if record is None or record.pid != me:
                    return  # the last user is stopping it
                if clients(data_dir):
                    continue
                clear_record(data_dir, me)
            os.kill(me, signal.SIGTERM)
            return

    thread = threading.Thread(target=watch, name="stop-when-unused", daemon=True)
    thread.start()
    return thread
