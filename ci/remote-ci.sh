#!/usr/bin/env bash
# Remote CI client: bash + curl + tar (rsync for --rsync-to), the same flags and exit codes as
# `python remoteci.py submit`. Run it straight from the server:
#   curl -fsS "$REMOTE_CI_SERVER/ci/remote-ci.sh" | bash -s -- --workspace proj --script 'make test'
# stdout carries exactly the job's log; everything the client says goes to stderr.
# Exit codes: 0 success, the script's code on failure, 124 timeout, 1 error/cancelled/unreachable,
# 2 refused (bad flags, rsync failed, HTTP 4xx), 130/143 when interrupted (the job is cancelled).
# Written for bash 3.2+ (macOS runners) with curl 7.63+ (for -w %{stderr}).

set -o pipefail

PROG=remote-ci
IGNORE_FILE=.remoteciignore
FOLLOW_READ_TIMEOUT=60   # a quiet job is re-followed this often
BACKOFF_MAX=10

SERVER=${REMOTE_CI_SERVER:-}
TOKEN=${REMOTE_CI_TOKEN:-}
MODE="" SOURCE="" GIT_REF="" SCRIPT="" TIMEOUT="" NAME=""
MAX_WAIT=1500 FAIL_ON_WAIT_TIMEOUT=0 RETRY_FOR=300
RSYNC_TO="" SOURCE_DIR=. INCLUDE_GIT=0
ENV_KEYS=() ENV_VALUES=()
ARTIFACTS=() DOWNLOAD_DIR="" WEBHOOK="" HOST=""
PIPELINE="" KIND=jobs  # --pipeline FILE; KIND: what JOB_ID names (jobs, or pipelines)
TMP="" TMP_OWNER="" JOB_ID="" CHILD_PID="" SUBMITTING=0 PENDING_SIGNAL=""
LAST_OK=0 DELAY=1
COMPRESSION=gzip  # of an upload: zstd when both ends have it (choose_compression)

say() { printf '%s: %s\n' "$PROG" "$*" >&2; }
# printf is a builtin: the token never appears on a command line that `ps` shows.
auth_header() { printf 'Authorization: Bearer %s\n' "$TOKEN"; }
die() { local code=$1; shift; say "$*"; exit "$code"; }
refuse() { die 2 "$*"; }

usage() {
  cat >&2 <<'EOF'
usage: remote-ci.sh --server URL (--workspace W | --rsync-to DEST | --upload DIR | --git [URL] [--ref R])
                    --script S [--timeout SEC] [--name N] [--env K=V ...] [--max-wait SEC]
                    [--fail-on-wait-timeout] [--retry-for SEC] [--source-dir DIR] [--include-git]
                    [--artifacts GLOB ...] [--download-artifacts DIR] [--webhook URL] [--host NAME]
       remote-ci.sh --pipeline FILE [a source flag, or the source in FILE] [--max-wait SEC] ...
The token comes from $REMOTE_CI_TOKEN (or --token), the server from $REMOTE_CI_SERVER.
Exit: 0 success, the script's code, 124 timeout, 1 error/cancelled, 2 refused, 130/143 interrupted.
See ci/README.md.
EOF
}

# --- arguments -----------------------------------------------------------------------------------

set_mode() {
  [ -z "$MODE" ] || refuse "give only one of --workspace, --upload, --git"
  MODE=$1 SOURCE=$2
}

parse_args() {
  local arg flag value has_value
  while [ $# -gt 0 ]; do
    arg=$1; shift
    case $arg in
      --*=*) flag=${arg%%=*} value=${arg#*=} has_value=1 ;;
      *) flag=$arg value="" has_value=0 ;;
    esac
    case $flag in
      --server|--token|--workspace|--upload|--ref|--script|--timeout|--name|--env|--max-wait|\
      --retry-for|--rsync-to|--source-dir|--artifacts|--download-artifacts|--webhook|--host|\
      --pipeline)
        if [ $has_value = 0 ]; then
          [ $# -gt 0 ] || refuse "$flag needs a value; see --help"
          value=$1; shift
        fi ;;
    esac
    case $flag in
      --server) SERVER=$value ;;
      --token) TOKEN=$value ;;
      --workspace) set_mode rsync "$value" ;;
      --upload) set_mode upload "$value" ;;
      --git)
        # Without a value: this CI's own repository (see git_from_ci).
        if [ $has_value = 0 ] && [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then value=$1; shift; fi
        set_mode git "$value" ;;
      --ref) GIT_REF=$value ;;
      --script) SCRIPT=$value ;;
      --timeout) TIMEOUT=$value ;;
      --name) NAME=$value ;;
      --env) add_env "$value" ;;
      --max-wait) MAX_WAIT=$value ;;
      --fail-on-wait-timeout) FAIL_ON_WAIT_TIMEOUT=1 ;;
      --retry-for) RETRY_FOR=$value ;;
      --rsync-to) RSYNC_TO=$value ;;
      --source-dir) SOURCE_DIR=$value ;;
      --include-git) INCLUDE_GIT=1 ;;
      --artifacts) ARTIFACTS+=("$value") ;;
      --download-artifacts) DOWNLOAD_DIR=$value ;;
      --webhook) WEBHOOK=$value ;;
      --host) HOST=$value ;;  # the worker host (REMOTE_CI_NODE_NAME) that must run the job
      --pipeline) PIPELINE=$value ;;
      -h|--help) usage; exit 0 ;;
      *) refuse "unknown argument '$arg'; see --help" ;;
    esac
  done
  check_args
}

add_env() {
  local key=${1%%=*}
  case $key in ''|[0-9]*|*[!A-Za-z0-9_]*)
    refuse "--env '$1': '$key' is not a variable name (letters, digits and _); write --env NAME=value" ;;
  esac
  if [ "$key" = "$1" ]; then  # a bare NAME copies this shell's NAME (handy for CI secrets)
    [ -n "${!key+set}" ] || refuse "--env $key: $key is not set here; write --env $key=value"
    ENV_KEYS+=("$key"); ENV_VALUES+=("${!key}")
  else
    ENV_KEYS+=("$key"); ENV_VALUES+=("${1#*=}")
  fi
}

is_seconds() { case $1 in ''|*[!0-9]*) return 1 ;; esac; }

check_args() {
  SERVER=${SERVER%/}
  [ -n "$SERVER" ] || refuse "no server: pass --server https://your-ci-host or set REMOTE_CI_SERVER"
  case $SERVER in http://?*|https://?*) ;; *) refuse "--server '$SERVER' must be an http:// or https:// URL" ;; esac
  [ -n "$TOKEN" ] || refuse "no API token: set REMOTE_CI_TOKEN from your CI's secret store" \
    "(GitHub: secrets.REMOTE_CI_TOKEN; GitLab: a masked CI/CD variable)"
  if [ -n "$PIPELINE" ]; then
    check_pipeline_args
  else
    [ -n "$SCRIPT" ] || refuse "--script is required: the shell command(s) to run, e.g. --script 'make test'"
  fi
  is_seconds "$MAX_WAIT" || refuse "--max-wait must be a whole number of seconds"
  is_seconds "$RETRY_FOR" || refuse "--retry-for must be a whole number of seconds"
  if [ -n "$TIMEOUT" ]; then
    if ! is_seconds "$TIMEOUT" || [ "$TIMEOUT" -lt 1 ]; then
      refuse "--timeout must be a whole number of seconds, 1 or more"
    fi
  fi
  [ -z "$GIT_REF" ] || [ "$MODE" = git ] || refuse "--ref only applies to --git"
  if [ -n "$RSYNC_TO" ]; then
    [ "$MODE" = "" ] || [ "$MODE" = rsync ] || refuse "--rsync-to goes with --workspace, not --$MODE"
    if [ -z "$MODE" ]; then
      local path=${RSYNC_TO#*:}
      path=${path%/}
      [ -n "${path##*/}" ] || refuse "--rsync-to '$RSYNC_TO' names no directory; add --workspace NAME"
      MODE=rsync SOURCE=${path##*/}
    fi
  fi
  case $MODE in
    "") [ -n "$PIPELINE" ] \
      || refuse "say where the code is: --workspace NAME, --rsync-to DEST, --upload DIR, or --git [URL]" ;;
    upload) [ -d "$SOURCE" ] || refuse "--upload '$SOURCE' is not a directory; pass the directory to send, e.g. --upload ." ;;
    git) [ -n "$SOURCE" ] || git_from_ci ;;
  esac
}

git_from_ci() {
  if [ -n "${GITHUB_REPOSITORY:-}" ]; then
    SOURCE="${GITHUB_SERVER_URL:-https://github.com}/$GITHUB_REPOSITORY.git"
    GIT_REF=${GIT_REF:-${GITHUB_SHA:-}}
  elif [ -n "${CI_REPOSITORY_URL:-}" ]; then
    SOURCE=$CI_REPOSITORY_URL
    GIT_REF=${GIT_REF:-${CI_COMMIT_SHA:-}}
  else
    refuse "--git without a URL needs GitHub Actions (GITHUB_REPOSITORY) or GitLab CI" \
      "(CI_REPOSITORY_URL) variables; outside them pass --git URL"
  fi
}

# --- encoding --------------------------------------------------------------------------------------
# These functions answer in REPLY instead of on stdout. `x=$(f)` forks a subshell, and bash drops
# a SIGINT that arrives while it waits for a foreground child that does not die of it (it assumes
# the child handled it): the public CI's cancel would be lost. So from the submission until the
# job is final the client runs only builtins in the foreground; commands go through run_bg.

json_string() {  # $1 as a JSON string literal; byte-wise, so any UTF-8 passes through
  local LC_ALL=C s=$1 code c octal escaped
  s=${s//\\/\\\\}; s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}; s=${s//$'\r'/\\r}; s=${s//$'\t'/\\t}
  for code in 1 2 3 4 5 6 7 8 11 12 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31; do
    printf -v octal '%03o' "$code"
    printf -v c '%b' "\\$octal"
    case $s in *"$c"*) printf -v escaped '\\u%04x' "$code"; s=${s//"$c"/$escaped} ;; esac
  done
  REPLY="\"$s\""
}

urlencode() {
  local LC_ALL=C s=$1 out="" c hex i byte
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    case $c in
      [A-Za-z0-9._~-]) out+=$c ;;
      *) printf -v byte '%d' "'$c"; printf -v hex '%%%02X' "$((byte & 255))"; out+=$hex ;;
    esac
  done
  REPLY=$out
}

env_json() {
  local i out="{"
  for ((i = 0; i < ${#ENV_KEYS[@]}; i++)); do
    [ $i = 0 ] || out+=","
    json_string "${ENV_KEYS[i]}"; out+="$REPLY:"
    json_string "${ENV_VALUES[i]}"; out+=$REPLY
  done
  REPLY="$out}"
}

artifacts_json() {
  local pattern out="" sep=""
  for pattern in "${ARTIFACTS[@]}"; do json_string "$pattern"; out+="$sep$REPLY"; sep=","; done
  REPLY="[$out]"
}

json_body() {  # the JSON submission for rsync and git jobs
  local out
  json_string "$SCRIPT"; out="{\"script\":$REPLY"
  [ -z "$TIMEOUT" ] || out+=",\"timeout\":$TIMEOUT"
  [ -z "$NAME" ] || { json_string "$NAME"; out+=",\"name\":$REPLY"; }
  [ ${#ENV_KEYS[@]} = 0 ] || { env_json; out+=",\"env\":$REPLY"; }
  [ ${#ARTIFACTS[@]} = 0 ] || { artifacts_json; out+=",\"artifacts\":$REPLY"; }
  [ -z "$WEBHOOK" ] || { json_string "$WEBHOOK"; out+=",\"webhook\":$REPLY"; }
  [ -z "$HOST" ] || { json_string "$HOST"; out+=",\"host\":$REPLY"; }
  if [ "$MODE" = git ]; then
    json_string "$SOURCE"; out+=",\"repo\":$REPLY"
    [ -z "$GIT_REF" ] || { json_string "$GIT_REF"; out+=",\"ref\":$REPLY"; }
  else
    json_string "$SOURCE"; out+=",\"workspace\":$REPLY"
  fi
  REPLY="$out}"
}

upload_query() {  # a raw-body upload carries its fields in the query string; env, artifacts as JSON
  local out
  urlencode "$SCRIPT"; out="script=$REPLY"
  [ -z "$TIMEOUT" ] || out+="&timeout=$TIMEOUT"
  [ -z "$NAME" ] || { urlencode "$NAME"; out+="&name=$REPLY"; }
  [ ${#ENV_KEYS[@]} = 0 ] || { env_json; urlencode "$REPLY"; out+="&env=$REPLY"; }
  [ ${#ARTIFACTS[@]} = 0 ] || { artifacts_json; urlencode "$REPLY"; out+="&artifacts=$REPLY"; }
  [ -z "$WEBHOOK" ] || { urlencode "$WEBHOOK"; out+="&webhook=$REPLY"; }
  [ -z "$HOST" ] || { urlencode "$HOST"; out+="&host=$REPLY"; }
  REPLY=$out
}

# json_field NAME < the server's compact JSON: a string or number value ("" when absent). Safe
# without a parser: inside a JSON string every quote is escaped, so "NAME":" only matches a key.
json_field() {
  local body="" line value=""
  local string_re='"'"$1"'":"(([^"\\]|\\.)*)"' number_re='"'"$1"'":(-?[0-9]+)'
  local bs=\\ q='"'
  while IFS= read -r line || [ -n "$line" ]; do body+=$line; done
  if [[ $body =~ $string_re ]]; then
    value=${BASH_REMATCH[1]}
    value=${value//"$bs$q"/$q}; value=${value//"${bs}n"/ }; value=${value//"$bs$bs"/$bs}
  elif [[ $body =~ $number_re ]]; then
    value=${BASH_REMATCH[1]}
  fi
  REPLY=$value
}

header() {  # header NAME FILE: the last value of a response header in a curl -D file
  local line value=""
  while IFS= read -r line; do
    line=${line%$'\r'}
    shopt -s nocasematch
    if [[ $line == "$1:"* ]]; then value=${line#*:}; value=${value# }; fi
    shopt -u nocasematch
  done < "$2"
  REPLY=$value
}

# --- HTTP with retries -----------------------------------------------------------------------------

# run_bg CMD...: run in the background and wait, so SIGTERM is handled at once, not after CMD.
run_bg() {
  "$@" &
  CHILD_PID=$!
  wait_child
}

wait_child() {  # wait for CHILD_PID; a signal deferred by on_signal wakes `wait` early, not us
  local rc
  while :; do
    wait "$CHILD_PID"
    rc=$?
    if [ "$rc" -le 128 ] || ! kill -0 "$CHILD_PID" 2>/dev/null; then break; fi
  done
  CHILD_PID=""
  return "$rc"
}

# curl_call OUT METHOD PATH [curl args...]: body to $TMP/OUT.body, headers to $TMP/OUT.hdr,
# sets HTTP_CODE (000 when there was no answer) and CURL_RC.
curl_call() {
  local out=$1 method=$2 path=$3
  shift 3
  : > "$TMP/$out.hdr"; : > "$TMP/$out.body"
  run_bg curl -sS -X "$method" -H @"$TMP/auth" -H 'Expect:' --connect-timeout 10 \
    -D "$TMP/$out.hdr" -o "$TMP/$out.body" -w '%{http_code}' "$@" "$SERVER$path" \
    </dev/null >"$TMP/$out.code" 2>"$TMP/$out.err"
  CURL_RC=$?
  read_code "$out"
}

read_code() {
  HTTP_CODE=""
  IFS= read -r HTTP_CODE < "$TMP/$1.code"
  [ -n "$HTTP_CODE" ] || HTTP_CODE=000
}

retryable() {  # no answer, or a proxy/server saying "later"
  case $HTTP_CODE in 000|502|503|504) return 0 ;; esac
  return 1
}

mark_ok() { LAST_OK=$SECONDS DELAY=1; }

# backoff WHAT REASON: sleep before the next try, or give up once --retry-for is spent.
backoff() {
  local spent=$((SECONDS - LAST_OK)) left=$((DEADLINE - SECONDS))
  # SECONDS counts whole seconds: -le keeps at least one retry whatever the tick
  [ $spent -le "$RETRY_FOR" ] || die 1 "gave up $1 after $spent s of failures ($2); check that the" \
    "server is up, or raise --retry-for"
  # Past --max-wait (e.g. 0) only the retry budget bounds a submission: never retry without a pause.
  [ $left -gt 0 ] && [ $left -lt $DELAY ] || left=$DELAY
  say "$1 failed ($2); retrying in $left s"
  run_bg sleep "$left"
  DELAY=$((DELAY * 2 > BACKOFF_MAX ? BACKOFF_MAX : DELAY * 2))
}

why() {  # why OUT: the reason a call failed, for messages: the server's error, else curl's
  local msg="" line
  [ ! -s "$TMP/$1.body" ] || { json_field error < "$TMP/$1.body"; msg=$REPLY; }
  if [ -z "$msg" ] && [ -f "$TMP/$1.err" ]; then
    while IFS= read -r line; do
      case $line in ''|'@@ '*) ;; *) msg=${msg:-${line%$'\r'}} ;; esac
    done < "$TMP/$1.err"
  fi
  if [ "$HTTP_CODE" = 000 ]; then
    REPLY="curl exit $CURL_RC: ${msg:-no answer}"
  else
    REPLY="HTTP $HTTP_CODE: ${msg:-no message}"
  fi
}

# --- the job ----------------------------------------------------------------------------------------

run_rsync() {
  local args=(-az --delete --timeout=60 "--filter=:- $IGNORE_FILE")
  [ $INCLUDE_GIT = 1 ] || args+=(--exclude=/.git)
  command -v rsync >/dev/null || refuse "rsync is not installed on this runner; install it or use --upload DIR"
  say "rsync $SOURCE_DIR -> $RSYNC_TO"
  run_bg rsync "${args[@]}" "${SOURCE_DIR%/}/" "$RSYNC_TO" </dev/null \
    || refuse "rsync to $RSYNC_TO failed (exit $?); check the SSH key (RSYNC_RSH='ssh -i KEY') and" \
      "that the destination is allowed (ci/README.md)"
}

tar_excludes() {  # .remoteciignore lines as tar --exclude options (tar's globbing, no negation)
  local line
  [ $INCLUDE_GIT = 1 ] || printf '%s\n' --exclude=.git
  [ -f "$SOURCE/$IGNORE_FILE" ] || return 0
  while IFS= read -r line || [ -n "$line" ]; do
    line=${line%$'\r'}
    case $line in
      ''|'#'*) continue ;;
      '!'*) say "$IGNORE_FILE: '$line': negation is not supported by the bash client; ignored"; continue ;;
    esac
    line=${line%/}
    case $line in /*) line=.$line ;; */*) line=./$line ;; esac  # anchored at the root, as in git
    printf '%s\n' "--exclude=$line"
  done < "$SOURCE/$IGNORE_FILE"
}

choose_compression() {  # zstd (every core) when we have it and the server unpacks it, else gzip
  COMPRESSION=gzip
  command -v zstd >/dev/null || return 0
  curl_call health GET /api/health --max-time 10
  [ "$HTTP_CODE" = 200 ] || return 0  # the submission's own retries will say what is wrong
  local body="" line
  while IFS= read -r line || [ -n "$line" ]; do body+=$line; done < "$TMP/health.body"
  case $body in *'"uploads":['*'"zstd"'*) COMPRESSION=zstd ;; esac
}

pack() {  # the source dir as a compressed tar on stdout; $@ are tar's --exclude options
  if [ "$COMPRESSION" = zstd ]; then
    tar -C "$SOURCE" -cf - "$@" . | zstd -T0 -q -c
  else
    tar -C "$SOURCE" -czf - "$@" .
  fi
}

send_upload() {  # streams tar's output as the body: no temp file, whatever the size
  local excludes=() line query
  while IFS= read -r line; do excludes+=("$line"); done < <(tar_excludes)
  upload_query; query=$REPLY
  : > "$TMP/submit.hdr"
  pack ${excludes[@]+"${excludes[@]}"} </dev/null 2>"$TMP/tar.err" \
    | curl -sS -X POST -T - -H @"$TMP/auth" -H "Content-Type: application/$COMPRESSION" -H 'Expect:' \
      -H "Idempotency-Key: $SUBMISSION_KEY" \
      --connect-timeout 10 --speed-limit 1 --speed-time 120 -D "$TMP/submit.hdr" \
      -o "$TMP/submit.body" -w '%{http_code}' "$SERVER/api/jobs/upload?$query" \
      >"$TMP/submit.code" 2>"$TMP/submit.err" &
  CHILD_PID=$!
  wait_child
  CURL_RC=$?
  read_code submit
}

new_key() {  # one per submission, sent again on every retry: a lost reply never runs a job twice
  if [ -r /proc/sys/kernel/random/uuid ]; then
    read -r REPLY < /proc/sys/kernel/random/uuid
  else  # no /proc (macOS): the one subshell left, before anything is sent
    REPLY=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
  fi
}

submit() {
  local hint location
  new_key; SUBMISSION_KEY=$REPLY
  # A signal now is held until the server answers (see on_signal): the job may be accepted
  # already, and only its id lets us cancel it.
  SUBMITTING=1
  while :; do
    if [ "$MODE" = upload ]; then
      send_upload
    else
      json_body; printf '%s' "$REPLY" > "$TMP/request.json"
      curl_call submit POST "/api/jobs/$MODE" --max-time 60 -H 'Content-Type: application/json' \
        -H "Idempotency-Key: $SUBMISSION_KEY" \
        --data-binary @"$TMP/request.json"
    fi
    if ! retryable || [ -n "$PENDING_SIGNAL" ]; then break; fi
    why submit; backoff "submitting the job" "$REPLY"
  done
  mark_ok
  header Location "$TMP/submit.hdr"; location=$REPLY
  # One assignment, then SUBMITTING=0: a signal never finds half an id.
  if [ "$HTTP_CODE" = 202 ]; then JOB_ID=${location##*/}; fi
  SUBMITTING=0
  # shellcheck disable=SC2086  # PENDING_SIGNAL is "NAME CODE"
  [ -z "$PENDING_SIGNAL" ] || on_signal $PENDING_SIGNAL
  if [ -n "$JOB_ID" ]; then return 0; fi
  case $HTTP_CODE in
    401) hint=" (check the REMOTE_CI_TOKEN secret)" ;;
    413) hint=" (send less: list build outputs in $IGNORE_FILE)" ;;
    *) hint="" ;;
  esac
  case $HTTP_CODE in
    4??) json_field error < "$TMP/submit.body"
      # The HTTP server's own refusals (a body past the limit, a malformed request) are plain text.
      [ -n "$REPLY" ] || REPLY=$(head -c 300 "$TMP/submit.body" | tr -s '\r\n' '  ')
      refuse "the server refused the job (HTTP $HTTP_CODE): $REPLY$hint" ;;
    *) why submit; die 1 "the server failed to accept the job ($REPLY); tell the server's operator" ;;
  esac
}

# fetch_log QUERY MAX_TIME: append log bytes to stdout; sets GOT (bytes written), STATUS, LOG_CODE.
fetch_log() {
  local line got=0
  : > "$TMP/log.hdr"
  # The body goes straight to our stdout; -w reports code and byte count on stderr, after curl's
  # own messages, so the offset counts exactly what was written.
  run_bg curl -sS -N -f -H @"$TMP/auth" --connect-timeout 10 --max-time "$2" -D "$TMP/log.hdr" \
    -w '%{stderr}\n@@ %{http_code} %{size_download}\n' "$SERVER/api/jobs/$JOB_ID/logs?$1" \
    </dev/null 2>"$TMP/log.err"
  CURL_RC=$?
  LOG_CODE=000
  while IFS= read -r line; do
    case $line in '@@ '*) line=${line#@@ }; LOG_CODE=${line%% *} got=${line#* } ;; esac
  done < "$TMP/log.err"
  GOT=$got
  header X-Job-Status "$TMP/log.hdr"; STATUS=$REPLY
}

follow() {  # the log from byte 0, across reconnects, never losing or repeating a byte
  local max
  OFFSET=0
  while [ $SECONDS -lt "$DEADLINE" ]; do
    max=$((DEADLINE - SECONDS))
    [ $max -le $FOLLOW_READ_TIMEOUT ] || max=$FOLLOW_READ_TIMEOUT
    fetch_log "follow=1&offset=$OFFSET" "$max"
    OFFSET=$((OFFSET + GOT))
    if [ "$LOG_CODE" = 200 ] && [ "$CURL_RC" = 28 ]; then continue; fi  # a quiet job: ask again
    header X-Log-Poll-After "$TMP/log.hdr"
    if [ "$LOG_CODE" = 200 ] && [ "$CURL_RC" = 0 ] && [ -n "$REPLY" ]; then
      # A busy server (or a job far back in the queue) answered with what there is and when
      # to ask again, instead of a stream. Not a failure: it spends none of --retry-for.
      mark_ok
      case $STATUS in success|failed|timeout|error|cancelled) return 0 ;; esac
      poll_pause "$REPLY"
      continue
    fi
    [ "$CURL_RC" != 23 ] || die 1 "cannot write the log to stdout; is the output piped into a" \
      "command that exited?"
    if [ "$LOG_CODE" != 200 ] || [ "$CURL_RC" != 0 ]; then
      HTTP_CODE=$LOG_CODE
      why log
      retryable || [ "$LOG_CODE" = 200 ] || die 1 "the server would not show the log ($REPLY)"
      backoff "following the log" "$REPLY"
      continue
    fi
    mark_ok
    # The stream ended: the job is final, or the server stopped or cut a long stream. A
    # snapshot from our offset tells which, and carries any last bytes.
    fetch_log "offset=$OFFSET" 30
    OFFSET=$((OFFSET + GOT))
    if [ "$LOG_CODE" = 200 ] && [ "$CURL_RC" = 0 ]; then
      case $STATUS in success|failed|timeout|error|cancelled) return 0 ;; esac
    fi
  done
  return 1
}

poll_pause() {  # sleep the server's X-Log-Poll-After (whole seconds, 1..60), never past --max-wait
  local wait=${1%%.*} left=$((DEADLINE - SECONDS))
  is_seconds "$wait" && [ "$wait" -ge 1 ] || wait=1
  [ "$wait" -le 60 ] || wait=60
  [ "$wait" -le "$left" ] || wait=$left
  [ "$wait" -le 0 ] || run_bg sleep "$wait"
}

exit_code_for() {  # STATUS and the job object on stdin -> REPLY: this step's exit code
  local code
  case $1 in
    success) REPLY=0 ;;
    timeout) REPLY=124 ;;
    failed)
      json_field exit_code; code=$REPLY
      case $code in
        -[0-9]*) REPLY=$((128 - code > 255 ? 255 : 128 - code)) ;;  # killed by a signal
        [1-9]*) if [ "$code" -le 255 ]; then REPLY=$code; else REPLY=1; fi ;;
        *) REPLY=1 ;;
      esac ;;
    *) REPLY=1 ;;
  esac
}

finish() {
  local url="$SERVER/jobs/$JOB_ID" code detail
  while :; do
    curl_call job GET "/api/jobs/$JOB_ID" --max-time 30
    retryable || break
    why job; backoff "reading the job's result" "$REPLY"
  done
  exit_code_for "$STATUS" < "$TMP/job.body"; code=$REPLY
  json_field error < "$TMP/job.body"; detail=$REPLY
  say "job $JOB_ID ended $STATUS${detail:+ ($detail)}, exit code $code: $url"
  # A green job whose outputs did not arrive is not green.
  [ -z "$DOWNLOAD_DIR" ] || download_artifacts || [ "$code" != 0 ] || code=1
  exit "$code"
}

fetch_artifacts() {  # the tar.gz streamed straight into tar: no temp file, whatever the size
  curl -sS -f -H @"$TMP/auth" --connect-timeout 10 --speed-limit 1 --speed-time 120 \
    -w '%{stderr}\n@@ %{http_code}\n' "$SERVER/api/jobs/$JOB_ID/artifacts.tar.gz" \
    </dev/null 2>"$TMP/artifacts.err" \
    | tar -xzf - -C "$DOWNLOAD_DIR" --no-same-owner  # tar refuses absolute and .. names itself
}

download_artifacts() {  # 0 when the artifacts are unpacked into DOWNLOAD_DIR
  local line
  mkdir -p "$DOWNLOAD_DIR" || { say "cannot create --download-artifacts '$DOWNLOAD_DIR'"; return 1; }
  mark_ok
  while :; do
    run_bg fetch_artifacts
    CURL_RC=$?
    HTTP_CODE=000
    while IFS= read -r line; do
      case $line in '@@ '*) HTTP_CODE=${line#@@ } ;; esac
    done < "$TMP/artifacts.err"
    if [ "$CURL_RC" = 0 ]; then say "artifacts unpacked into $DOWNLOAD_DIR"; return 0; fi
    retryable || break
    why artifacts; backoff "downloading the artifacts" "$REPLY"
  done
  why artifacts
  say "could not download the artifacts ($REPLY); they stay at" \
    "$SERVER/api/jobs/$JOB_ID/artifacts"
  return 1
}

# --- pipelines ----------------------------------------------------------------------------------------
# --pipeline FILE: submit the pipeline, print every started job's log with each line prefixed by
# the job's name, exit with the code of the first job that failed (0 when all succeeded).
# Parallel arrays, not associative ones: bash 3.2 has none.
P_IDS=() P_NAMES=() P_OFFSETS=() P_PARTIAL=() P_DONE=()

check_pipeline_args() {
  local flag
  for flag in "--script:$SCRIPT" "--timeout:$TIMEOUT" "--name:$NAME" "--webhook:$WEBHOOK" "--host:$HOST" \
      "--download-artifacts:$DOWNLOAD_DIR" "--env:${ENV_KEYS[*]:-}" "--artifacts:${ARTIFACTS[*]:-}"; do
    [ -z "${flag#*:}" ] || refuse "${flag%%:*} does not go with --pipeline: set it in the file"
  done
  if [ ! -f "$PIPELINE" ] || [ ! -r "$PIPELINE" ]; then
    refuse "--pipeline '$PIPELINE' is not a readable file"
  fi
}

pipeline_body() {  # REPLY: the file's JSON object, with the source of a source flag put first
  local text="" line source
  while IFS= read -r line || [ -n "$line" ]; do text+=$line$'\n'; done < "$PIPELINE"
  text=${text#"${text%%[![:space:]]*}"}
  case $text in '{'*) ;; *) refuse "--pipeline '$PIPELINE' must hold a JSON object {\"stages\": ...}" ;; esac
  case $MODE in
    git) json_string "$SOURCE"; source="{\"mode\":\"git\",\"repo\":$REPLY"
      [ -z "$GIT_REF" ] || { json_string "$GIT_REF"; source+=",\"ref\":$REPLY"; }
      source+="}" ;;
    rsync) json_string "$SOURCE"; source="{\"mode\":\"rsync\",\"workspace\":$REPLY}" ;;
    *) REPLY=$text; return ;;
  esac
  text=${text#\{}
  case ${text#"${text%%[![:space:]]*}"} in '}'*) REPLY="{\"source\":$source$text" ;;
    *) REPLY="{\"source\":$source,$text" ;; esac
}

send_pipeline_upload() {  # the archive as multipart field `code`, the file as field `pipeline`
  local excludes=() line suffix=gz
  [ "$COMPRESSION" != zstd ] || suffix=zst
  while IFS= read -r line; do excludes+=("$line"); done < <(tar_excludes)
  : > "$TMP/submit.hdr"
  pack ${excludes[@]+"${excludes[@]}"} </dev/null 2>"$TMP/tar.err" \
    | curl -sS -X POST -H @"$TMP/auth" -H 'Expect:' -H "Idempotency-Key: $SUBMISSION_KEY" \
      -F "pipeline=<$PIPELINE" -F "code=@-;filename=code.tar.$suffix;type=application/$COMPRESSION" \
      --connect-timeout 10 --speed-limit 1 --speed-time 120 -D "$TMP/submit.hdr" \
      -o "$TMP/submit.body" -w '%{http_code}' "$SERVER/api/pipelines" \
      >"$TMP/submit.code" 2>"$TMP/submit.err" &
  CHILD_PID=$!
  wait_child
  CURL_RC=$?
  read_code submit
}

submit_pipeline() {
  local location
  new_key; SUBMISSION_KEY=$REPLY
  SUBMITTING=1 KIND=pipelines
  while :; do
    if [ "$MODE" = upload ]; then
      send_pipeline_upload
    else
      pipeline_body; printf '%s' "$REPLY" > "$TMP/request.json"
      curl_call submit POST /api/pipelines --max-time 660 -H 'Content-Type: application/json' \
        -H "Idempotency-Key: $SUBMISSION_KEY" --data-binary @"$TMP/request.json"
    fi
    if ! retryable || [ -n "$PENDING_SIGNAL" ]; then break; fi
    why submit; backoff "submitting the pipeline" "$REPLY"
  done
  mark_ok
  header Location "$TMP/submit.hdr"; location=$REPLY
  if [ "$HTTP_CODE" = 202 ]; then JOB_ID=${location##*/}; fi
  SUBMITTING=0
  # shellcheck disable=SC2086  # PENDING_SIGNAL is "NAME CODE"
  [ -z "$PENDING_SIGNAL" ] || on_signal $PENDING_SIGNAL
  if [ -n "$JOB_ID" ]; then return 0; fi
  case $HTTP_CODE in
    4??) json_field error < "$TMP/submit.body"; refuse "the server refused the pipeline (HTTP $HTTP_CODE): $REPLY" ;;
    *) why submit; die 1 "the server failed to accept the pipeline ($REPLY); tell the server's operator" ;;
  esac
}

stage_jobs() {  # stage_jobs BODY started|all -> IDS: job ids of the pipeline's (started) stages
  local rest=${1#*\"stages\":} ids part
  local re='"status":"([a-z]+)","jobs":\[([^]]*)\]'
  IDS=()
  while [[ $rest =~ $re ]]; do
    rest=${rest#*"${BASH_REMATCH[0]}"}
    [ "$2" = all ] || [ "${BASH_REMATCH[1]}" != waiting ] || continue
    ids=${BASH_REMATCH[2]//\"/}
    while [ -n "$ids" ]; do
      part=${ids%%,*}; IDS+=("$part")
      [ "$part" != "$ids" ] || break
      ids=${ids#*,}
    done
  done
}

pipeline_log() {  # pipeline_log INDEX: print what is new in that job's log, prefixed; P_DONE when ended
  local i=$1 line name=${P_NAMES[$1]} got=0
  curl_call plog GET "/api/jobs/${P_IDS[i]}/logs?offset=${P_OFFSETS[i]}" --max-time 30
  [ "$HTTP_CODE" = 200 ] || return 1
  while IFS= read -r line; do  # complete lines; bytes are counted from the file's size below
    printf '[%s] %s\n' "$name" "${P_PARTIAL[i]}$line"
    P_PARTIAL[i]=""
  done < "$TMP/plog.body"
  P_PARTIAL[i]+=$line  # a last line without its newline yet
  header X-Log-Offset "$TMP/plog.hdr"; got=$REPLY
  is_seconds "$got" && P_OFFSETS[i]=$got
  header X-Job-Status "$TMP/plog.hdr"
  case $REPLY in success|failed|timeout|error|cancelled)
    [ -z "${P_PARTIAL[i]}" ] || printf '[%s] %s\n' "$name" "${P_PARTIAL[i]}"
    P_PARTIAL[i]="" P_DONE[i]=1 ;;
  esac
}

pipeline_index() {  # pipeline_index ID -> REPLY: its index in P_IDS, added (with its name) if new
  local i
  for ((i = 0; i < ${#P_IDS[@]}; i++)); do [ "${P_IDS[i]}" != "$1" ] || { REPLY=$i; return 0; }; done
  curl_call job GET "/api/jobs/$1" --max-time 30
  [ "$HTTP_CODE" = 200 ] || return 1
  i=${#P_IDS[@]}
  json_field name < "$TMP/job.body"
  P_IDS[i]=$1 P_NAMES[i]=${REPLY:-$1} P_OFFSETS[i]=0 P_PARTIAL[i]="" P_DONE[i]=0
  json_field started_at < "$TMP/job.body"
  if [ -z "$REPLY" ]; then  # cancelled before it ran: nothing to show
    json_field status < "$TMP/job.body"
    case $REPLY in success|failed|timeout|error|cancelled) P_DONE[i]=1 ;; esac
  fi
  REPLY=$i
}

follow_pipeline() {  # 0 once the pipeline and every job it started have ended; 1 at --max-wait
  local body line status pending id i
  while [ $SECONDS -lt "$DEADLINE" ]; do
    curl_call pipeline GET "/api/pipelines/$JOB_ID" --max-time 30
    if [ "$HTTP_CODE" != 200 ]; then
      why pipeline
      retryable || die 1 "the server would not show the pipeline ($REPLY)"
      backoff "following the pipeline" "$REPLY"; continue
    fi
    body=""
    while IFS= read -r line || [ -n "$line" ]; do body+=$line; done < "$TMP/pipeline.body"
    json_field status <<< "$body"; status=$REPLY
    stage_jobs "$body" started
    pending=0
    for id in ${IDS[@]+"${IDS[@]}"}; do
      if ! pipeline_index "$id"; then pending=1; continue; fi
      i=$REPLY
      [ "${P_DONE[i]}" = 1 ] || pipeline_log "$i" || pending=1
      [ "${P_DONE[i]}" = 1 ] || pending=1
    done
    mark_ok
    case $status in success|failed|cancelled) [ $pending = 1 ] || return 0 ;; esac
    run_bg sleep 1
  done
  return 1
}

pipeline_exit() {  # REPLY: 0, or the exit code of the job that failed first (1 when none ran)
  local id best="" code=1 culprit="" finished body="" line
  json_field status < "$TMP/pipeline.body"
  if [ "$REPLY" = success ]; then REPLY=0; return; fi
  while IFS= read -r line || [ -n "$line" ]; do body+=$line; done < "$TMP/pipeline.body"
  stage_jobs "$body" all
  for id in ${IDS[@]+"${IDS[@]}"}; do
    curl_call job GET "/api/jobs/$id" --max-time 30
    [ "$HTTP_CODE" = 200 ] || continue
    json_field started_at < "$TMP/job.body"; [ -n "$REPLY" ] || continue
    json_field status < "$TMP/job.body"; [ "$REPLY" != success ] || continue
    json_field finished_at < "$TMP/job.body"; finished=$REPLY
    if [ -z "$best" ] || [[ $finished < $best ]]; then
      best=$finished
      json_field status < "$TMP/job.body"; exit_code_for "$REPLY" < "$TMP/job.body"; code=$REPLY
      json_field name < "$TMP/job.body"; culprit=$REPLY
    fi
  done
  [ -z "$culprit" ] || say "first failed: $culprit"
  REPLY=$code
}

run_pipeline() {
  local status
  submit_pipeline
  say "pipeline $JOB_ID running: $SERVER/pipelines/$JOB_ID"
  if ! follow_pipeline; then
    say "stopped waiting after --max-wait $MAX_WAIT s; the pipeline goes on: $SERVER/pipelines/$JOB_ID"
    exit $((FAIL_ON_WAIT_TIMEOUT ? 1 : 0))
  fi
  json_field status < "$TMP/pipeline.body"; status=$REPLY
  pipeline_exit
  say "pipeline $JOB_ID ended $status, exit code $REPLY: $SERVER/pipelines/$JOB_ID"
  exit "$REPLY"
}

# --- signals and main ---------------------------------------------------------------------------------

on_signal() {  # the public CI cancels the step: cancel the remote job too, bounded, then exit
  if [ "$SUBMITTING" = 1 ] && [ -z "$PENDING_SIGNAL" ]; then
    PENDING_SIGNAL="$1 $2"
    say "got SIG$1: cancelling the job once the server has answered the submission" \
      "(send it again to stop at once)"
    return
  fi
  trap '' INT TERM
  [ -z "$CHILD_PID" ] || kill "$CHILD_PID" 2>/dev/null
  say "got SIG$1: cancelling the remote job"
  if [ -z "$JOB_ID" ]; then
    say "interrupted before the server accepted the job; nothing to cancel"
  # The header goes on stdin, so the cancel works even if the temp dir is gone.
  elif auth_header | curl -sS -f -X POST -H @- --max-time 10 \
      --retry 3 --retry-max-time 10 -o /dev/null "$SERVER/api/$KIND/$JOB_ID/cancel"; then
    say "cancelled ${KIND%s} $JOB_ID: $SERVER/$KIND/$JOB_ID"
  else
    say "could not cancel ${KIND%s} $JOB_ID; cancel it at $SERVER/$KIND/$JOB_ID"
  fi
  exit "$2"
}

make_tmp() {  # the private temp dir (token file, replies), removed when this shell exits
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/remote-ci.XXXXXX") || die 1 "cannot create a temp dir; set TMPDIR"
  TMP_OWNER=$BASHPID
  trap cleanup EXIT
}

cleanup() {
  # A child forked for a background command (run_bg) runs this EXIT trap too if it is killed
  # before it execs, as on_signal's kill of the log follower can do: only the shell that made
  # the dir may remove it, or the cancel that follows finds no token file (HTTP 401).
  [ -z "$TMP" ] || [ "$BASHPID" != "$TMP_OWNER" ] || rm -rf "$TMP"
}

main() {
  local position
  parse_args "$@"
  DEADLINE=$((SECONDS + MAX_WAIT))
  make_tmp
  # A trap runs inside whatever command it interrupts, with that command's redirections (curl's
  # stderr goes to a file while it runs): fd 3 keeps our own stderr for what on_signal says.
  exec 3>&2
  trap 'on_signal INT 130 2>&3' INT
  trap 'on_signal TERM 143 2>&3' TERM
  # The token goes to curl in a private file, never on a command line that `ps` shows.
  (umask 077 && auth_header > "$TMP/auth")
  mark_ok
  [ -z "$RSYNC_TO" ] || run_rsync
  if [ "$MODE" = upload ]; then
    choose_compression
    if [ "$COMPRESSION" = zstd ]; then say "packing $SOURCE as tar.zst"; else say "packing $SOURCE as tar.gz"; fi
  fi
  [ -z "$PIPELINE" ] || run_pipeline  # it exits
  submit
  json_field queue_position < "$TMP/submit.body"; position=$REPLY
  say "job $JOB_ID queued${position:+, queue position $position}: $SERVER/jobs/$JOB_ID"
  json_field waiting_for < "$TMP/submit.body"
  [ -z "$REPLY" ] || say "it waits for $REPLY"
  if follow; then finish; fi
  say "stopped waiting after --max-wait $MAX_WAIT s; the job goes on. Follow it at $SERVER/jobs/$JOB_ID" \
    "or: curl -fsS -N -H \"Authorization: Bearer \$REMOTE_CI_TOKEN\"" \
    "'$SERVER/api/jobs/$JOB_ID/logs?follow=1&offset=$OFFSET'"
  exit $((FAIL_ON_WAIT_TIMEOUT ? 1 : 0))
}

# Sourced (for tests) it only defines functions; run or piped into `bash -s` it runs.
if [ -z "${BASH_SOURCE[0]:-}" ] || [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
