"""The pure parts of job isolation, and the job dirs handed to a job's user and taken back."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from remoteci.system import isolation
from remoteci.system.isolation import JobUser
from remoteci.worker import jobdirs
from tests.helpers import work_root

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another uid needs root")


def test_effective_capabilities_are_read_from_proc_status() -> None:
    status = "Name:\tpython\nCapInh:\t0000000000000000\nCapEff:\t00000000000000e1\n"
    mask = isolation.effective_capabilities(status)
    assert mask == 0xE1
    assert isolation.missing_capabilities(mask) == []
    assert isolation.missing_capabilities(0x21) == ["CAP_SETUID", "CAP_SETGID"]
    assert isolation.effective_capabilities("Name:\tx\n") == 0


def test_drop_command_clears_groups_and_every_capability() -> None:
    argv = isolation.drop_command(JobUser(61200, 61200), ["/bin/bash", "-c", "make"],
                                  setpriv="/usr/bin/setpriv", as_root=True)
    assert argv == ["/usr/bin/setpriv", "--reuid=61200", "--regid=61200", "--clear-groups",
                    "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all",
                    "--no-new-privs", "--", "/bin/bash", "-c", "make"]
    named = isolation.drop_command(JobUser(1001, 1001, (27, 100)), ["sh"], setpriv="setpriv",
                                   as_root=False)
    assert "--groups=27,100" in named and "--bounding-set=-all" not in named


def test_the_weakest_reported_isolation_wins() -> None:
    assert isolation.weakest(["user", "none"], "user") == "none"
    assert isolation.weakest(["user", None], "none") == "user"
    assert isolation.weakest([], "none") == "none"


def test_unreachable_ancestor_names_the_first_closed_dir() -> None:
    base = Path(tempfile.mkdtemp(dir=work_root()))  # every parent passable: /tmp and a 0711 dir
    try:
        base.chmod(0o755)
        closed = base / "closed"
        (closed / "inner").mkdir(parents=True)
        closed.chmod(0o700)
        assert isolation.unreachable_ancestor(str(closed / "inner" / "work")) == str(closed)
        closed.chmod(0o711)
        assert isolation.unreachable_ancestor(str(closed / "inner" / "work")) is None
    finally:
        shutil.rmtree(base)


@as_root
def test_give_hands_the_tree_over_without_following_links(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("the server's")
    top = tmp_path / "job"
    (top / "src" / "deep").mkdir(parents=True, mode=0o755)
    (top / "src" / "deep" / "file").write_text("code")
    (top / "link").symlink_to(outside)
    (top / "dirlink").symlink_to(tmp_path)
    jobdirs.give(top, JobUser(61300, 61301))
    for path in (top, top / "src", top / "src" / "deep", top / "src" / "deep" / "file"):
        assert (path.stat().st_uid, path.stat().st_gid) == (61300, 61301), path
    assert top.stat().st_mode & 0o777 == 0o700
    assert (top / "link").lstat().st_uid == 61300
    assert outside.stat().st_uid == 0 and tmp_path.stat().st_uid == 0, "links are not followed"


@as_root
def test_take_back_owns_every_entry_again_and_opens_closed_dirs(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("x")
    top = tmp_path / "job"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "b" / "report.xml").write_text("<ok/>")
    (top / "escape").symlink_to(outside)
    jobdirs.give(top, JobUser(61300, 61300))
    os.chown(outside, 61300, 61300)
    (top / "a" / "b" / "report.xml").chmod(0o000)
    (top / "a").chmod(0o000)
    jobdirs.take_back(top)
    for path in (top, top / "a", top / "a" / "b", top / "a" / "b" / "report.xml"):
        assert path.lstat().st_uid == os.geteuid(), path
    assert (top / "a").stat().st_mode & 0o777 == 0o700
    assert (top / "a" / "b" / "report.xml").stat().st_mode & 0o600 == 0o600
    assert (top / "escape").lstat().st_uid == os.geteuid()
    assert outside.stat().st_uid == 61300, "the link's target is not taken"


def test_take_back_of_a_deep_tree_and_removal(tmp_path: Path) -> None:
    top = tmp_path / "job"
    path = top
    for _ in range(300):
        path = path / "d"
    path.mkdir(parents=True)
    jobdirs.take_back(top)
    jobdirs.remove(top)
    assert not top.exists()
    jobdirs.take_back(tmp_path / "gone")  # nothing there: nothing to do


def test_a_jobs_home_is_its_code_dir_with_a_suffix_no_job_id_can_have() -> None:
    home = jobdirs.home_dir(Path("/w"), "abc-1")
    assert home == Path("/w/abc-1.home") and jobdirs.job_id_of(home.name) == "abc-1"
    assert jobdirs.job_id_of("abc-1") == "abc-1"
