"""Serving job logs from plain files: offsets, snapshots and live follow, with flat memory."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

CHUNK = 1024 * 1024
FOLLOW_POLL = 0.1  # seconds between looks at a quiet log
# The first looks after the log goes quiet come sooner: a short job (or the last line of any
# job) is then sent within milliseconds, not after a whole FOLLOW_POLL. Doubling up to it costs
# a few more looks per quiet stretch, not per second of it.
FOLLOW_FIRST_POLL = 0.005
FOLLOW_MAX_SECONDS = 1800  # a follower reconnects with ?offset= after this; no stream is endless
POLL_AFTER_MAX = 10  # seconds; the longest a waiting client is told to wait before asking again


def log_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def read_range(path: Path, start: int, end: int) -> Iterator[bytes]:
    """Bytes [start, end) of a file in large reads; `end` is a snapshot, the file may grow."""
    if end <= start:
        return
    with open(path, "rb", buffering=0) as f:
        position = start
        while position < end:
            chunk = os.pread(f.fileno(), min(CHUNK, end - position), position)
            if not chunk:
                return  # truncated under us (retention sweep); end the body early
            position += len(chunk)
            yield chunk


def follow(path: Path, start: int, is_final: Callable[[], bool], stop: threading.Event,
           disconnected: Callable[[], bool]) -> Generator[bytes, None, None]:
    """Yield the log from `start` as it grows, until the job is final and every byte is out."""
    position = start
    deadline = time.monotonic() + FOLLOW_MAX_SECONDS
    pause = FOLLOW_FIRST_POLL
    while not stop.is_set() and time.monotonic() < deadline and not disconnected():
        size = log_size(path)
        if size > position:
            for chunk in read_range(path, position, size):
                position += len(chunk)
                yield chunk
            pause = FOLLOW_FIRST_POLL
            continue
        # Ask for the status only when the file is quiet: a final job writes nothing more.
        if is_final():
            size = log_size(path)
            if size > position:
                yield from read_range(path, position, size)
            return
        stop.wait(pause)
        pause = min(pause * 2, FOLLOW_POLL)


def streams_now(status: str, queue_position: int | None, concurrency: int) -> bool:
    """Whether a follow is worth a held thread: its job runs, or is next in line to run.

    A follow holds a server thread for as long as it lasts, and a job far back in the queue
    writes nothing for as long as it waits: were it streamed, the number of CI steps a server
    could keep waiting would be its thread count, each costing a thread (and a status look
    every FOLLOW_POLL) for the whole wait. So such a follow gets a poll answer instead: one
    short request every poll_after() seconds, whatever the wait. The head of the queue (as
    many jobs as one host runs at once) streams, so a job on an idle server shows at once.
    """
    if status != "queued":
        return True
    return queue_position is None or queue_position <= concurrency


def poll_after(status: str, queue_position: int | None, concurrency: int) -> int:
    """Seconds a client should wait before asking again: 1 for a job that runs (or is about
    to), growing with its place in the queue, since a job far back will not start soon."""
    if status != "queued" or not queue_position:
        return 1
    return max(1, min(POLL_AFTER_MAX, queue_position // max(1, 5 * concurrency) + 1))
