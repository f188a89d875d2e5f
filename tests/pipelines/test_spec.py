"""Pipeline specs and plans, pure: what is accepted, what each refusal names, what jobs become."""

from __future__ import annotations

from typing import Any

import pytest

from remoteci.errors import ApiError
from remoteci.pipelines.objects import pipeline_object, stage_status
from remoteci.pipelines.plan import Snapshot, stage_templates
from remoteci.pipelines.spec import (
    MAX_JOBS,
    GitSource,
    Limits,
    RsyncSource,
    parse_pipeline,
    parse_pipeline_field,
)

LIMITS = Limits(max_timeout=600)
STAGES = [{"name": "build", "jobs": [{"name": "b", "script": "make", "artifacts": ["dist/**"]}]},
          {"name": "test", "jobs": [{"name": "t1", "script": "make t1", "timeout": 30,
                                     "env": {"A": "1"}}, {"name": "t2", "script": "make t2"}]}]


def refusal(data: dict[str, Any], uploaded: bool = False) -> str:
    with pytest.raises(ApiError) as caught:
        parse_pipeline(data, LIMITS, uploaded=uploaded)
    assert caught.value.status == 400
    return caught.value.message


def test_a_git_pipeline_parses_with_defaults() -> None:
    spec = parse_pipeline({"name": "ci", "source": {"mode": "git", "repo": "https://h/o/r.git",
                                                    "ref": "main"}, "stages": STAGES}, LIMITS,
                          uploaded=False)
    assert spec.source == GitSource("https://h/o/r.git", "main")
    assert [s.name for s in spec.stages] == ["build", "test"]
    t1 = spec.stages[1].jobs[0]
    assert (t1.name, t1.common.timeout, t1.common.env) == ("t1", 30, {"A": "1"})
    assert spec.stages[1].jobs[1].common.timeout == 600  # the server's limit
    assert spec.stages[0].jobs[0].common.artifacts == ("dist/**",)


def test_an_rsync_pipeline_and_an_uploaded_one() -> None:
    rsync = parse_pipeline({"source": {"mode": "rsync", "workspace": "p"}, "stages": STAGES},
                           LIMITS, uploaded=False)
    assert rsync.source == RsyncSource("p") and rsync.name is None
    uploaded = parse_pipeline({"stages": STAGES}, LIMITS, uploaded=True)
    assert uploaded.source is None


@pytest.mark.parametrize(("data", "named"), [
    ({"stages": STAGES}, "'source'"),
    ({"source": "git", "stages": STAGES}, "'source'"),
    ({"source": {"mode": "hg"}, "stages": STAGES}, "'source.mode'"),
    ({"source": {"mode": "git", "repo": "https://h/r.git", "branch": "x"}, "stages": STAGES},
     "'branch'"),
    ({"source": {"mode": "git", "repo": "-u"}, "stages": STAGES}, "source: field 'repo'"),
    ({"source": {"mode": "git", "repo": "https://h/o/r.git", "ref": "a..b"}, "stages": STAGES},
     "source: field 'ref'"),
    ({"source": {"mode": "rsync", "workspace": ""}, "stages": STAGES}, "field 'workspace'"),
    ({"source": {"mode": "rsync", "workspace": "p"}, "stages": {}}, "'stages'"),
    ({"source": {"mode": "rsync", "workspace": "p"}, "stages": ["x"]}, "'stages[0]'"),
    ({"source": {"mode": "rsync", "workspace": "p"}, "stages": [{"jobs": []}]}, "'stages[0].name'"),
    ({"source": {"mode": "rsync", "workspace": "p"},
      "stages": [STAGES[0], {"name": "build", "jobs": [{"name": "x", "script": "y"}]}]},
     "'stages[1].name'"),
    ({"source": {"mode": "rsync", "workspace": "p"},
      "stages": [STAGES[0], {"name": "again", "jobs": [{"name": "b", "script": "y"}]}]},
     "'stages[1].jobs[0].name'"),
    ({"source": {"mode": "rsync", "workspace": "p"},
      "stages": [{"name": "s", "jobs": [{"name": "j", "script": "x", "webhook": "https://h/"}]}]},
     "'webhook'"),
    ({"source": {"mode": "rsync", "workspace": "p"},
      "stages": [{"name": "s", "jobs": [{"name": "j", "script": "x", "env": {"1": "x"}}]}]},
     "stages[0].jobs[0]: env name"),
    ({"source": {"mode": "rsync", "workspace": "p"},
      "stages": [{"name": "s", "jobs": [{"name": "j\n", "script": "x"}]}]},
     "'stages[0].jobs[0].name'"),
    ({"source": {"mode": "rsync", "workspace": "p"}, "stages": [
        {"name": f"s{i}", "jobs": [{"name": f"j{i}-{k}", "script": "x"} for k in range(10)]}
        for i in range(MAX_JOBS // 10 + 1)]}, f"at most {MAX_JOBS}"),
])
def test_refusals_name_the_field(data: dict[str, Any], named: str) -> None:
    assert named in refusal(data)


def test_an_upload_names_no_source_and_its_field_must_be_json() -> None:
    assert "'source'" in refusal({"source": {"mode": "rsync", "workspace": "p"},
                                  "stages": STAGES}, uploaded=True)
    for raw, named in (("", "'pipeline'"), ("{", "'pipeline'"), ("[]", "'pipeline'")):
        with pytest.raises(ApiError) as caught:
            parse_pipeline_field(raw)
        assert named in caught.value.message
    assert parse_pipeline_field('{"stages": []}') == {"stages": []}


def test_the_plan_hands_each_later_job_the_artifacts_of_earlier_stages() -> None:
    ship_stage = {"name": "ship", "jobs": [{"name": "s", "script": "ship"}]}
    spec = parse_pipeline({"stages": [*STAGES, ship_stage]}, LIMITS, uploaded=True)
    stages = stage_templates(spec, "p1", "alpha", Snapshot("upload", "upload", "/d/p1",
                                                           archive="/d/p1/a.tar.gz"))
    build, test, ship = (s["jobs"] for s in stages)
    assert "inputs" not in build[0]["payload"]
    assert test[0]["payload"]["inputs"] == [build[0]["id"]]
    assert ship[0]["payload"]["inputs"] == [build[0]["id"]]  # t1, t2 keep nothing
    payload = test[0]["payload"]
    assert payload["mode"] == "upload" and payload["path"] == "/d/p1/a.tar.gz"
    assert payload["pipeline"] == "p1" and payload["stage"] == "test"
    record = test[0]["record"]
    assert record["stage_index"] == "1" and record["owner"] == "alpha" and record["name"] == "t1"
    assert all(isinstance(v, str) for v in record.values())
    ids = [j["id"] for s in stages for j in s["jobs"]]
    assert len(set(ids)) == len(ids)


def test_a_tree_snapshot_is_copied_like_a_workspace() -> None:
    spec = parse_pipeline({"stages": STAGES}, LIMITS, uploaded=True)
    stages = stage_templates(spec, "p1", "admin", Snapshot("git", "https://h/r.git", "/d/p1",
                                                           ref="main", commit="a" * 40))
    job = stages[0]["jobs"][0]
    assert job["payload"]["mode"] == "rsync" and job["payload"]["snapshot_root"] == "/d/p1"
    assert job["record"]["mode"] == "git" and job["record"]["commit"] == "a" * 40


@pytest.mark.parametrize(("status", "current", "expected"), [
    ("running", 1, ["success", "running", "waiting"]),
    ("success", 2, ["success", "success", "success"]),
    ("failed", 0, ["failed", "cancelled", "cancelled"]),
    ("cancelled", 1, ["success", "cancelled", "cancelled"]),
])
def test_stage_statuses_follow_from_the_pipeline(status: str, current: int,
                                                 expected: list[str]) -> None:
    assert [stage_status(i, current, status) for i in range(3)] == expected


def test_the_pipeline_object_never_shows_the_stored_plan() -> None:
    record = {"id": "p", "status": "running", "stage": "0", "owner": "o", "created_at": "t",
              "spec": '[{"name": "s", "jobs": [{"id": "j1", "record": {}, '
                      '"payload": {"env": {"SECRET": "x"}}}]}]'}
    obj = pipeline_object(record)
    assert obj["stages"] == [{"name": "s", "status": "running", "jobs": ["j1"]}]
    assert "SECRET" not in str(obj) and obj["finished_at"] is None
