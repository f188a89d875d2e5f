"""The log: one line per event on stderr; under systemd, syslog priority prefixes let journald keep levels.

Never pass a token or job output here: these lines end up in the operator's journal.
"""

from __future__ import annotations

import os
import sys
import time

_UNDER_JOURNAL = bool(os.environ.get("JOURNAL_STREAM"))
_PRIORITY = {"error": 3, "warning": 4, "info": 6}


def _emit(level: str, component: str, message: str) -> None:
    if _UNDER_JOURNAL:
        line = f"<{_PRIORITY[level]}>{component}[{os.getpid()}]: {message}\n"
    else:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        line = f"{stamp} {level.upper():7} {component}[{os.getpid()}]: {message}\n"
    try:
        sys.stderr.write(line)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # a closed stderr must never take the server down


def info(component: str, message: str) -> None:
    _emit("info", component, message)


def warning(component: str, message: str) -> None:
    _emit("warning", component, message)


def error(component: str, message: str) -> None:
    _emit("error", component, message)
