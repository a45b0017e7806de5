"""The real CLI in a pseudo-terminal of a given size, and the screens a person would see: a
small emulator of the control sequences a live progress display writes (carriage return,
cursor up/down/column, erase line/screen; colours are ignored)."""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass, field

_CSI = re.compile(rb"\x1b\[([0-9;?]*)([A-Za-z])")


@dataclass
class Screen:
    columns: int
    lines: list[list[str]] = field(default_factory=lambda: [[]])
    row: int = 0
    col: int = 0

    def _line(self) -> list[str]:
        while len(self.lines) <= self.row:
            self.lines.append([])
        return self.lines[self.row]

    def _put(self, ch: str) -> None:
        if self.col >= self.columns:  # the terminal wraps a full line
            self.row += 1
            self.col = 0
        line = self._line()
        while len(line) < self.col:
            line.append(" ")
        if self.col < len(line):
            line[self.col] = ch
        else:
            line.append(ch)
        self.col += 1

    def feed(self, text: str) -> None:
        i = 0
        data = text.encode()
        while i < len(data):
            if data[i] == 0x1B:
                match = _CSI.match(data, i)
                if match:
                    self._csi(match.group(1).decode(), match.group(2).decode())
                    i = match.end()
                    continue
                i += 2  # another escape: skip it
                continue
            # One UTF-8 character.
            length = 1
            while i + length < len(data) and (data[i + length] & 0xC0) == 0x80:
                length += 1
            ch = data[i : i + length].decode(errors="replace")
            i += length
            if ch == "\n":
                self.row += 1
                self.col = 0
                self._line()
            elif ch == "\r":
                self.col = 0
            elif ch >= " ":
                self._put(ch)

    def _csi(self, params: str, final: str) -> None:
        numbers = [int(p) for p in params.replace("?", "").split(";") if p.isdigit()]
        n = numbers[0] if numbers else 1
        if final == "A":
            self.row = max(0, self.row - n)
        elif final == "B":
            self.row += n
        elif final == "C":
            self.col += n
        elif final == "D":
            self.col = max(0, self.col - n)
        elif final == "G":
            self.col = max(0, n - 1)
        elif final == "K":
            line = self._line()
            mode = numbers[0] if numbers else 0
            if mode == 2:
                line.clear()
            elif mode == 0:
                del line[self.col :]
        elif final == "J":
            mode = numbers[0] if numbers else 0
            if mode == 2:
                self.lines = [[]]
            elif mode == 0:
                del self._line()[self.col :]
                del self.lines[self.row + 1 :]

    def text(self) -> list[str]:
        return ["".join(line).rstrip() for line in self.lines]


@dataclass
class PtyRun:
    returncode: int
    output: str  # everything written, control sequences included
    screens: list[list[str]]  # the screen after each read: what a person saw, frame by frame

    @property
    def final(self) -> list[str]:
        return self.screens[-1] if self.screens else []


def run_in_pty(
    args: list[str],
    env: dict[str, str],
    columns: int,
    rows: int = 40,
    timeout: float = 180,
    *,
    size_in_env: bool = True,
) -> PtyRun:
    """`sessionflow ARGS` on a terminal of columns by rows, to the end. Without size_in_env the
    CLI has only the terminal to ask its size (no COLUMNS/LINES), as in a person's shell."""
    env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")}
    if size_in_env:
        env |= {"COLUMNS": str(columns), "LINES": str(rows)}
    parent, child = os.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sessionflow", *args],
        stdin=child,
        stdout=child,
        stderr=child,
        env={**env, "TERM": "xterm"},
        close_fds=True,
    )
    os.close(child)
    screen = Screen(columns)
    screens: list[list[str]] = []
    chunks: list[bytes] = []
    pending = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([parent], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(parent, 65536)
            except OSError:  # EIO: the child side is closed
                break
            if not data:
                break
            chunks.append(data)
            # Keep an incomplete UTF-8 character for the next read.
            data = pending + data
            cut = len(data)
            while cut > 0 and (data[cut - 1] & 0xC0) == 0x80:
                cut -= 1
            if cut > 0 and data[cut - 1] >= 0xC0:
                cut -= 1
            else:
                cut = len(data)
            pending = data[cut:]
            screen.feed(data[:cut].decode(errors="replace"))
            screens.append(screen.text())
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(parent)
    return PtyRun(proc.returncode, b"".join(chunks).decode(errors="replace"), screens)
