"""Jobs as their own Unix user: whether this process may switch users, and how a job drops to one.

A job that runs as the server's own user can read the server's token, its Redis socket and every
other project's files, and signal the server. When this process may switch users (root, or the
capabilities below), every job runs as an unprivileged uid that owns nothing of the server's,
as systemd's `DynamicUser=` does: one stable uid per token owner from a range, with no passwd
entry needed, or one named user for every job.

The switch itself is util-linux's `setpriv`, exec'd between the executor and the job's shell:
it changes uid, gid and groups and clears the inheritable and ambient capability sets, which
matters when the server is not root but holds capabilities (a non-root setuid keeps them, and
ambient ones would survive into the job's exec). Doing it in Python would need a `preexec_fn`
in a threaded process, which the subprocess documentation warns may deadlock.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass

DEFAULT_UID_RANGE = (61184, 61439)  # the first 256 of systemd's DynamicUser= range
MAX_UID = 2**31 - 2  # (uid_t)-1 and -2 mean "no change" / overflow to some tools

CAP_CHOWN = 0
CAP_KILL = 5
CAP_SETGID = 6
CAP_SETUID = 7
# What an executor that is not root needs, and why (the systemd unit grants exactly these):
# SETUID/SETGID to start a job as its user, KILL to stop a job's tree, CHOWN to give the job
# its dir and take it back afterwards (after which we own it, so no CAP_FOWNER is needed).
NEEDED_CAPABILITIES = {"CAP_SETUID": CAP_SETUID, "CAP_SETGID": CAP_SETGID,
                       "CAP_KILL": CAP_KILL, "CAP_CHOWN": CAP_CHOWN}

USER = "user"
NONE = "none"


@dataclass(frozen=True)
class JobUser:
    """The ids a job's processes run with."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()


def parse_uid_range(raw: str) -> tuple[int, int]:
    """`61184-61439` -> (61184, 61439); ValueError naming the fix."""
    low_text, dash, high_text = raw.strip().partition("-")
    if not dash or not low_text.strip().isdigit() or not high_text.strip().isdigit():
        raise ValueError(f"{raw!r} is not a range of uids; write it as LOW-HIGH, e.g. 61184-61439")
    low, high = int(low_text), int(high_text)
    if not 1 <= low <= high <= MAX_UID:
        raise ValueError(f"{raw!r} must satisfy 1 <= LOW <= HIGH <= {MAX_UID}")
    return low, high


def named_user(name: str) -> JobUser:
    """REMOTE_CI_JOB_USER: an existing, non-root user, with its groups (as `su` would give)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"there is no user {name!r} on this host; create it or unset "
                         "REMOTE_CI_JOB_USER to get one uid per token owner") from None
    if entry.pw_uid == 0:
        raise ValueError(f"{name!r} is root; jobs must run as an unprivileged user")
    groups = tuple(sorted(set(os.getgrouplist(name, entry.pw_gid)) - {entry.pw_gid}))
    return JobUser(entry.pw_uid, entry.pw_gid, groups)


def effective_capabilities(proc_status: str) -> int:
    """The CapEff bit mask from the text of /proc/<pid>/status (0 if absent)."""
    for line in proc_status.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split(":", 1)[1].strip(), 16)
    return 0


def missing_capabilities(mask: int) -> list[str]:
    return [name for name, bit in NEEDED_CAPABILITIES.items() if not mask & (1 << bit)]


def can_switch_users() -> bool:
    """Root, or every capability the executor needs to run, stop and clean up other uids."""
    if os.geteuid() == 0:
        return True
    try:
        with open("/proc/self/status") as f:
            mask = effective_capabilities(f.read())
    except OSError:
        return False
    return not missing_capabilities(mask)


def weakest(reported: list[str | None], fallback: str) -> str:
    """The isolation the executors report ("none" if any runs jobs unisolated), else `fallback`."""
    if NONE in reported:
        return NONE
    return USER if USER in reported else fallback


def drop_command(user: JobUser, argv: list[str], *, setpriv: str, as_root: bool) -> list[str]:
    """`argv` run as `user` with no capabilities and no way to gain any (setuid binaries)."""
    groups = ["--groups=" + ",".join(map(str, user.groups))] if user.groups else ["--clear-groups"]
    # Emptying the bounding set needs CAP_SETPCAP, which only root has here; without it the
    # empty inheritable and ambient sets plus no_new_privs already leave the job nothing.
    bounding = ["--bounding-set=-all"] if as_root else []
    return [setpriv, f"--reuid={user.uid}", f"--regid={user.gid}", *groups,
            "--inh-caps=-all", "--ambient-caps=-all", *bounding, "--no-new-privs", "--", *argv]


def unreachable_ancestor(path: str) -> str | None:
    """The first directory from / down to `path` that other users may not pass (no o+x)."""
    current = "/"
    for part in [p for p in os.path.abspath(path).split("/") if p]:
        current = os.path.join(current, part)
        try:
            mode = os.stat(current).st_mode
        except FileNotFoundError:
            return None  # created by us below, with the right mode
        if not mode & 0o001:
            return current
    return None
