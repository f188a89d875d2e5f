"""The waitress thread pool: short answers keep their threads while long answers run."""

from __future__ import annotations

from remoteci.web.server import _Dispatcher
from tests.helpers import wait_until


def test_each_long_answer_brings_its_own_thread_while_it_lasts() -> None:
    pool = _Dispatcher(2)
    try:
        assert len(pool.threads) == 2
        pool.lend()
        pool.lend()
        assert len(pool.threads) == 4
        pool.give_back()
        wait_until(lambda: len(pool.threads) == 3, 10, "a thread given back")
    finally:
        pool.shutdown()
    pool.give_back()  # a long answer ending after shutdown starts nothing again
    assert len(pool.threads) == 0
