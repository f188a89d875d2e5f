"""A self-pipe for signals: a process waits in select() and any signal ends the wait at once.

Python runs signal handlers between bytecodes, so a blocking wait would only notice a
SIGCHLD or SIGTERM at its timeout. With the wakeup fd, the C-level handler writes a byte
here and the select() returns immediately; nothing is lost between checking and waiting.
"""

from __future__ import annotations

import os
import select
import signal


class SignalWakeup:
    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def install(self) -> None:
        signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, less if a signal arrives (or arrived since the last wait)."""
        select.select([self._read], [], [], seconds)
        try:
            while os.read(self._read, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        """In a forked child: leave the parent's pipe alone and stop writing to it."""
        signal.set_wakeup_fd(-1)
        os.close(self._read)
        os.close(self._write)
