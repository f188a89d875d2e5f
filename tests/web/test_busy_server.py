"""Many CI steps waiting on one busy server: every one ends as its job did, none falsely red."""

from __future__ import annotations

import http.client
import signal
from collections.abc import Callable

import pytest

from tests.client.test_client import CLIENTS, finish, job_named, own_server, start  # noqa: F401
from tests.helpers import TOKEN, Server, wait_until

CLIENT_COUNT = 8


def test_more_clients_than_follower_slots_all_end_as_their_jobs(
        own_server: Callable[..., Server]) -> None:  # noqa: F811 - the fixture imported above
    # Two stream slots, eight clients of both kinds, jobs that wait in the queue far longer than
    # --retry-for: a follow refused for want of a slot must not count as a failure.
    srv = own_server(env={"REMOTE_CI_MAX_FOLLOWERS": "2", "REMOTE_CI_CONCURRENCY": "2"},
                     wait_workers=2)
    srv.make_workspace("proj")
    procs = []
    for i in range(CLIENT_COUNT):
        kind = ("py", "sh")[i % 2]
        script = f"sleep 1; echo {i}; printf 'x%.0s' $(seq {i * 100}); exit $(({i} % 3))"
        procs.append((i, start(CLIENTS[kind], srv, "--workspace", "proj", "--name", f"waiter-{i}",
                               "--retry-for", "2", "--script", script)))
    for i, proc in procs:
        code, out, err = finish(proc)
        job = job_named(srv, f"waiter-{i}")
        assert code == i % 3, f"client {i}: exit {code}\n{err}"
        assert out == srv.log(job["id"]), f"client {i}: log differs\n{err}"
        assert out.startswith(f"{i}\n".encode() + b"x" * (i * 100)), err


@pytest.mark.parametrize("kind", sorted(CLIENTS))
@pytest.mark.parametrize(("sig", "expected"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_client_polling_a_busy_server_still_cancels_its_job(
        own_server: Callable[..., Server], kind: str, sig: int, expected: int) -> None:  # noqa: F811
    srv = own_server(env={"REMOTE_CI_MAX_FOLLOWERS": "1"})
    srv.make_workspace("proj")
    blocker = srv.submit("sleep 30")
    slot = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        slot.request("GET", f"/api/jobs/{blocker['id']}/logs?follow=1",
                     headers={"Authorization": f"Bearer {TOKEN}"})
        held = slot.getresponse()  # the only slot, held: the client can only poll
        assert held.status == 200
        proc = start(CLIENTS[kind], srv, "--workspace", "proj", "--name", "poller",
                     "--script", "echo started; sleep 30")
        job = job_named(srv, "poller", "running")
        wait_until(lambda: b"started" in srv.log(job["id"]), 10, "the job to print")
        proc.send_signal(sig)
        code, _, err = finish(proc)
    finally:
        slot.close()
        srv.request("POST", f"/api/jobs/{blocker['id']}/cancel")
    assert code == expected, err
    assert srv.wait_final(job["id"], 15)["status"] == "cancelled", err
