"""What is particular to the bash client, ci/remote-ci.sh: it parses, lints, is served by the
server and runs piped into bash, takes the Python client's flags, and encodes like it. Its contract
behaviour (exit codes, logs, signals, restarts) is tested with the Python client's in test_client.py."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, unquote

import pytest

from remoteci import client
from tests.helpers import ROOT, TOKEN, Server

SCRIPT = ROOT / "ci" / "remote-ci.sh"


def bash_function(call: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Source the script (which then only defines functions) and call one of them."""
    return subprocess.run(["bash", "-c", f'source "{SCRIPT}"; {call}', "test", *args], input=stdin,
                          capture_output=True, text=True, timeout=30, cwd=ROOT)


def reply_of(call: str, *args: str, stdin: str = "") -> str:
    """What a function answers in REPLY (the script's functions do not print their results)."""
    done = bash_function(f'{call}; printf "%s" "$REPLY"', *args, stdin=stdin)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_the_script_is_shellcheck_clean() -> None:
    done = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout


def test_it_takes_every_flag_of_the_python_client() -> None:
    text = SCRIPT.read_text()
    flags = [flag for action in client.build_parser()._actions for flag in action.option_strings
             if flag.startswith("--")]
    missing = [flag for flag in flags if f"{flag})" not in text and f"{flag}|" not in text]
    assert missing == []


def test_served_without_auth_and_runs_piped_into_bash(make_server: Callable[..., Server]) -> None:
    srv = make_server()
    srv.make_workspace("proj")
    served = srv.request("GET", "/ci/remote-ci.sh", token=None)
    assert served.status == 200 and served.body == SCRIPT.read_bytes()
    pipeline = (f'curl -fsS "{srv.url}/ci/remote-ci.sh" | bash -s -- --workspace proj '
                "--script 'echo piped; exit 3'")
    try:
        done = subprocess.run(["bash", "-c", pipeline], capture_output=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin", "REMOTE_CI_TOKEN": TOKEN,
                                   "REMOTE_CI_SERVER": srv.url})
    finally:
        srv.stop()  # SIGTERM: the server takes its executors with it
    assert done.returncode == 3, done.stderr
    assert done.stdout.startswith(b"piped\n")


@pytest.mark.parametrize(("args", "message"), [
    (["--workspace", "p"], "--script is required"),
    (["--script", "x"], "say where the code is"),
    (["--workspace", "p", "--upload", ".", "--script", "x"], "only one of"),
    (["--workspace", "p", "--script", "x", "--bogus"], "unknown argument"),
    (["--workspace", "p", "--script", "x", "--env", "1A=x"], "not a variable name"),
    (["--workspace", "p", "--script", "x", "--timeout", "soon"], "--timeout"),
    (["--git", "--script", "x"], "--git URL"),
    (["--workspace", "p", "--script", "x", "--server", "ftp://h"], "http://"),
])
def test_bad_arguments_exit_2_with_the_fix(args: list[str], message: str) -> None:
    done = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "REMOTE_CI_TOKEN": TOKEN,
                               "REMOTE_CI_SERVER": "http://127.0.0.1:9"})
    assert done.returncode == 2
    assert message in done.stderr


@pytest.mark.parametrize("value", ['plain', 'quote " and \\ backslash', "new\nline\ttab\rcr",
                                   "bell\x07 esc\x1b unit\x1f", "ünïcødé ✓", ""])
def test_json_strings_decode_to_the_original(value: str) -> None:
    assert json.loads(reply_of('json_string "$1"', value)) == value


def test_upload_query_decodes_like_the_python_clients() -> None:
    call = ('SCRIPT="$1"; NAME="n m"; TIMEOUT=5; add_env "K=v & \\"w\\""; add_env "U=ü"; '
            "upload_query")
    query = reply_of(call, "make test && echo 100%")
    fields = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
    assert fields["script"] == "make test && echo 100%"
    assert fields["name"] == "n m" and fields["timeout"] == "5"
    assert json.loads(fields["env"]) == {"K": 'v & "w"', "U": "ü"}
    assert unquote(query.split("&")[0]) == "script=make test && echo 100%"


def test_json_body_is_the_submission_object() -> None:
    call = 'SCRIPT="$1"; MODE=git; SOURCE=https://h/r.git; GIT_REF=main; add_env A=1; json_body'
    body = json.loads(reply_of(call, 'echo "hi"'))
    assert body == {"script": 'echo "hi"', "env": {"A": "1"}, "repo": "https://h/r.git", "ref": "main"}


def test_ignore_file_becomes_tar_excludes(tmp_path: Path) -> None:
    (tmp_path / client.IGNORE_FILE).write_text("# c\nbuild/\n*.log\n/top\ndocs/*.pdf\n!keep.log\n")
    done = bash_function('SOURCE="$1"; tar_excludes', str(tmp_path))
    assert done.stdout.splitlines() == ["--exclude=.git", "--exclude=build", "--exclude=*.log",
                                        "--exclude=./top", "--exclude=./docs/*.pdf"]
    assert "negation is not supported" in done.stderr


@pytest.mark.parametrize(("status", "job", "code"), [
    ("success", '{"exit_code":0}', "0"), ("failed", '{"exit_code":7,"error":null}', "7"),
    ("failed", '{"exit_code":-9}', "137"), ("failed", '{"exit_code":null}', "1"),
    ("timeout", "{}", "124"), ("error", '{"error":"executor lost"}', "1"), ("cancelled", "{}", "1")])
def test_exit_code_mirrors_the_job(status: str, job: str, code: str) -> None:
    assert reply_of('exit_code_for "$1"', status, stdin=job) == code


def test_json_field_is_not_fooled_by_keys_inside_strings() -> None:
    job = json.dumps({"script": 'echo "\\"status\\":\\"success\\""', "status": "failed",
                      "error": 'quote " and \\ slash'}, separators=(",", ":"))
    assert reply_of("json_field status", stdin=job) == "failed"
    assert reply_of("json_field error", stdin=job) == 'quote " and \\ slash'


def test_only_the_client_shell_removes_its_temp_dir() -> None:
    # on_signal kills the background curl; a child killed before it execs runs the EXIT trap
    # it inherited. It used to remove the temp dir, token file included, so the cancel that
    # followed was answered 401 and the job ran on.
    script = ('make_tmp; touch "$TMP/auth"; echo "$TMP"; '
              'for i in $(seq 200); do sleep 5 & kill "$!"; wait "$!"; done; ls "$TMP"')
    done = bash_function(script)
    tmp, listing = done.stdout.split("\n", 1)
    assert listing.split() == ["auth"], done.stderr
    assert not Path(tmp).exists()  # the client shell itself still cleans up when it exits


def test_host_goes_into_the_json_body_and_the_upload_query() -> None:
    body = json.loads(reply_of('SCRIPT=x; MODE=rsync; SOURCE=w; HOST="$1"; json_body', "build-2"))
    assert body == {"script": "x", "workspace": "w", "host": "build-2"}
    query = reply_of('SCRIPT=x; HOST="$1"; upload_query', "build-2")
    assert parse_qs(query)["host"] == ["build-2"]
