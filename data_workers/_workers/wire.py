"""A worker process's end of its two sockets, in ``multiprocessing.connection``'s framing.

The trainer speaks to a worker with ``multiprocessing.connection.Connection``
(the control socket) and ``processes._DataSocket`` (the data socket).  Both
frame a message as a 4-byte big-endian signed length (or -1, then an 8-byte
length) followed by the bytes, a pickle for ``send``/``recv``.  The worker
speaks the same framing over the raw file descriptors: importing
``multiprocessing`` would pull a dozen modules into every worker (subprocess,
tempfile, shutil, bz2, lzma, ...) before its first fetch, and every worker's
start-up is on the path of the first batch.
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any

__all__ = ["FramedSocket", "LENGTH", "LONG_LENGTH"]

#: A frame's header: its length, or -1 and then the length in LONG_LENGTH.
LENGTH = struct.Struct("!i")
LONG_LENGTH = struct.Struct("!Q")
#: Frames up to this size go out in one write (header and body together), as
#: multiprocessing sends them: one wake-up of the reader per small message.
_ONE_WRITE_BYTES = 16384


class FramedSocket:
    """Blocking, length-prefixed messages over one end of a socket pair."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        if self._fd < 0:
            raise OSError("the socket is closed")
        return self._fd

    def send(self, obj: Any) -> None:
        self.send_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))

    def send_bytes(self, data: bytes) -> None:
        """Write one frame.  Raises BrokenPipeError once the trainer's end is closed."""
        n = len(data)
        header = LENGTH.pack(n) if n <= 0x7FFFFFFF else LENGTH.pack(-1) + LONG_LENGTH.pack(n)
        if n <= _ONE_WRITE_BYTES:
            self._write(header + data)
        else:
            self._write(header)
            self._write(data)

    def recv(self) -> Any:
        return pickle.loads(self.recv_bytes())

    def recv_bytes(self) -> bytes:
        """Read one frame.  Raises EOFError once the trainer's end is closed."""
        (n,) = LENGTH.unpack(self._read(LENGTH.size))
        if n == -1:
            (n,) = LONG_LENGTH.unpack(self._read(LONG_LENGTH.size))
        return self._read(n)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def _write(self, data: bytes) -> None:
        with memoryview(data) as view:
            sent = 0
            while sent < len(view):
                sent += os.write(self.fileno(), view[sent:])

    def _read(self, n: int) -> bytes:
        parts = []
        left = n
        while left:
            part = os.read(self.fileno(), left)
            if not part:
                raise EOFError("the trainer closed the socket")
            parts.append(part)
            left -= len(part)
        return b"".join(parts)
