"""A payload's output, bounded: captured in memory for Python tasks, read back from the log file
of shell commands; the tail that heartbeats and outcomes carry."""

from __future__ import annotations

import io
import os

from pandaflow.pilot.payload import TAIL_BYTES


def cap_log(data: bytes, cap: int, dropped: int = 0) -> bytes:
    """Keep the last ``cap`` bytes of ``data``; if anything was dropped, say so in a first line."""
    if len(data) > cap:
        dropped += len(data) - cap
        data = data[-cap:] if cap > 0 else b""
    if not dropped:
        return data
    note = f"[pandaflow: log truncated: the first {dropped} bytes were dropped, the last {len(data)} follow]"
    return note.encode() + b"\n" + data


class Capture(io.TextIOBase):
    """Stands in for sys.stdout and sys.stderr during a task: keeps the text in memory, bounded."""

    encoding = "utf-8"  # some libraries consult sys.stdout.encoding

    def __init__(self, cap: int):
        super().__init__()
        self._parts: list[str] = []
        self._size = 0
        self._cap = cap
        self._dropped = 0  # bytes dropped from the front

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        self._parts.append(s)
        self._size += len(s)
        # Trim now and then, not per write, so a chatty task costs a list append per write.
        if self._size > 2 * self._cap + 65536:
            text = "".join(self._parts)
            cut = len(text) - self._cap
            self._dropped += len(text[:cut].encode("utf-8", "backslashreplace"))
            self._parts = [text[cut:]]
            self._size = self._cap
        return len(s)

    def getvalue(self) -> bytes:
        if not self._parts:
            return b""
        return cap_log("".join(self._parts).encode("utf-8", "backslashreplace"), self._cap, self._dropped)


def read_tail(path: str, size: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            f.seek(max(0, end - size))
            return f.read(size)
    except OSError:
        return b""


def read_log(path: str, cap: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            start = max(0, size - cap)
            f.seek(start)
            return cap_log(f.read(), cap, start)
    except OSError as exc:
        return f"[pandaflow: cannot read the payload log: {exc}]\n".encode()


def tail_text(data: bytes) -> str:
    return data[-TAIL_BYTES:].decode("utf-8", "replace")
