"""Zero-copy relay for bulk tunnels: `os.splice` through a pipe, driven by the event loop.

Owns: moving bytes between two raw socket descriptors in the kernel (socket -> pipe -> socket,
no copy into Python), with backpressure, half-close, resets and activity counters.
Must not: know about HTTP, Conn objects or transports (net.py decides when to promote a relay
here and hands over duplicated descriptors and any bytes it had already read).

Why: the Protocol relay in net.py is syscall-bound (~0.6 CPU-s per GiB, 93 % system time);
splice moves the same bytes for about half of that (../shared/FACTS.md). It costs four extra
descriptors per tunnel (two dups, one pipe per direction), so net.py only promotes tunnels that
have moved a lot of data; thousands of quiet tunnels stay on the Protocol relay.

Each direction is a small state machine:
  reading: the source is watched for readability; each wake-up splices what is there into the
      pipe and straight on to the destination;
  writing: the destination did not take everything (EAGAIN): stop reading the source, watch the
      destination for writability until the pipe is empty (this is the backpressure);
  done: EOF from the source has been passed on as shutdown(SHUT_WR) after the pipe drained.
The relay ends when both directions are done, or at the first error (reset, broken pipe).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket

SPLICE_F_MOVE = getattr(os, "SPLICE_F_MOVE", 1)
SPLICE_F_NONBLOCK = getattr(os, "SPLICE_F_NONBLOCK", 2)
_FLAGS = SPLICE_F_MOVE | SPLICE_F_NONBLOCK
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PIPE_SIZE = 1 << 20  # bigger pipes = fewer splice calls per GiB (capped by fs.pipe-max-size)
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK)

AVAILABLE = hasattr(os, "splice")


class _Direction:
    """src -> pipe -> dst. `moved` counts bytes taken from src."""

    def __init__(self, relay: SpliceRelay, src: int, dst: socket.socket, pending: bytes) -> None:
        self.relay = relay
        self.src = src
        self.dst = dst
        self.dst_fd = dst.fileno()
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.capacity = _grow_pipe(self.pipe_w)
        self.in_pipe = 0
        self.pending = pending  # bytes read before promotion: sent first, with send()
        self.moved = 0
        self.src_eof = False
        self.done = False
        self.reading = False
        self.writing = False

    # -- watching ---------------------------------------------------------------------------
    def start(self, src_eof: bool) -> None:
        self.src_eof = src_eof
        if self.pending or src_eof:
            self._flush()
        elif not self.done:
            self._watch_src()

    def _watch_src(self) -> None:
        if not self.reading:
            self.relay.loop.add_reader(self.src, self._on_readable)
            self.reading = True

    def _unwatch_src(self) -> None:
        if self.reading:
            self.relay.loop.remove_reader(self.src)
            self.reading = False

    def _watch_dst(self) -> None:
        if not self.writing:
            self.relay.loop.add_writer(self.dst_fd, self._flush)
            self.writing = True

    def _unwatch_dst(self) -> None:
        if self.writing:
            self.relay.loop.remove_writer(self.dst_fd)
            self.writing = False

    def stop(self) -> None:
        self._unwatch_src()
        self._unwatch_dst()
        for fd in (self.pipe_r, self.pipe_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- moving bytes ---------------------------------------------------------------------------
    def _on_readable(self) -> None:
        try:
            n = os.splice(self.src, self.pipe_w, self.capacity, flags=_FLAGS)
        except BlockingIOError:
            return
        except OSError as exc:
            self.relay.fail(exc)
            return
        if n == 0:
            self.src_eof = True
            self._unwatch_src()
        else:
            self.moved += n
            self.in_pipe += n
        self._flush()

    def _flush(self) -> None:
        """Push the pending bytes and the pipe's content to dst; then read again, wait for
        dst, or pass EOF on."""
        try:
            while self.pending:
                sent = self.dst.send(self.pending)
                self.pending = self.pending[sent:]
            while self.in_pipe:
                n = os.splice(self.pipe_r, self.dst_fd, self.in_pipe, flags=_FLAGS)
                self.in_pipe -= n
        except BlockingIOError:
            self._unwatch_src()
            self._watch_dst()
            return
        except OSError as exc:
            if exc.errno in _AGAIN:
                self._unwatch_src()
                self._watch_dst()
                return
            self.relay.fail(exc)
            return
        self._unwatch_dst()
        if self.src_eof:
            self._finish()
        else:
            self._watch_src()

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        self._unwatch_src()
        with contextlib.suppress(OSError):
            self.dst.shutdown(socket.SHUT_WR)
        self.relay.direction_done()


def _grow_pipe(fd: int) -> int:
    try:
        return fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        return 65536  # the default pipe size; still correct, only more calls per GiB


class SpliceRelay:
    """Relay between two connected, non-blocking socket descriptors that this object owns
    (it closes them). `a_pending`/`b_pending`: bytes already read from a (for b) and from b (for
    a). `a_eof`/`b_eof`: that side had already sent EOF. Raises OSError (e.g. EMFILE) from the
    constructor when the pipes cannot be made; the caller then keeps its other relay."""

    def __init__(
        self,
        a_fd: int,
        b_fd: int,
        a_pending: bytes = b"",
        b_pending: bytes = b"",
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.error: OSError | None = None
        self._a = socket.socket(fileno=a_fd)
        self._b = socket.socket(fileno=b_fd)
        self._dirs: list[_Direction] = []
        try:
            self._dirs.append(_Direction(self, a_fd, self._b, a_pending))
            self._dirs.append(_Direction(self, b_fd, self._a, b_pending))
        except OSError:
            self.close()
            raise
        self._finished = 0

    @property
    def a_to_b(self) -> int:
        return self._dirs[0].moved if self._dirs else 0

    @property
    def b_to_a(self) -> int:
        return self._dirs[1].moved if len(self._dirs) > 1 else 0

    def start(self, a_eof: bool = False, b_eof: bool = False) -> None:
        self._dirs[0].start(a_eof)
        if not self.done.done():
            self._dirs[1].start(b_eof)

    def direction_done(self) -> None:
        self._finished += 1
        if self._finished == 2 and not self.done.done():
            self.done.set_result(None)

    def fail(self, exc: OSError) -> None:
        self.error = exc
        for d in self._dirs:
            d._unwatch_src()
            d._unwatch_dst()
        if not self.done.done():
            self.done.set_result(None)

    def close(self) -> None:
        """Stop watching, close the pipes and our descriptors (idempotent)."""
        for d in self._dirs:
            d.stop()
        for sock in (self._a, self._b):
            with contextlib.suppress(OSError):
                sock.close()
        if not self.done.done():
            self.done.set_result(None)
