"""Settings from the environment (and flags of the same names), validated once at start."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from remoteci.auth.tokens import ProjectToken, TokensFileError, hash_token, load_tokens_file
from remoteci.history.db import HistoryURL, parse_history_url
from remoteci.hosts.names import NODE_NAME_RULE, is_node_name
from remoteci.store import redis_conn
from remoteci.system.isolation import DEFAULT_UID_RANGE, JobUser, named_user, parse_uid_range
from remoteci.webhooks.rules import MIN_SECRET_CHARS, HostPattern, parse_allowlist


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable and the fix."""


@dataclass(frozen=True)
class Settings:
    tokens: tuple[str, ...]
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 5000
    workspace_dir: Path = Path("/var/ci-workspace")
    data_dir: Path = Path("/var/lib/remote-ci")
    work_dir: Path = Path("/tmp/remote-ci")
    concurrency: int = 2
    job_timeout: int = 3600
    kill_grace: int = 60
    cancel_grace: int = 10
    drain_timeout: int = 300
    shell: str = "/bin/bash"
    retention_days: int = 7
    max_upload_mb: int = 500
    max_extract_mb: int = 5000
    max_archive_members: int = 200_000
    max_log_mb: int = 2048
    max_queue: int = 10_000
    max_followers: int = 8
    http_threads: int = 12
    http_idle_timeout: int = 120  # seconds a connection may stay silent (a trickled body) before it is closed
    git_allow_file: bool = False
    git_timeout: int = 600
    max_artifact_mb: int = 1024
    node_name: str = field(default_factory=socket.gethostname)
    tokens_file: Path | None = None
    project_tokens: tuple[ProjectToken, ...] = ()
    webhook_allow: tuple[HostPattern, ...] = ()
    webhook_secret: str | None = field(default=None, repr=False)  # never in a log line
    webhook_timeout: int = 5
    webhook_attempts: int = 6
    webhook_retry_seconds: float = 20.0
    job_uid_range: tuple[int, int] = DEFAULT_UID_RANGE
    job_user: JobUser | None = None  # REMOTE_CI_JOB_USER: every job as this user
    max_queued_per_owner: int = 1000  # 0: no cap
    max_stored_mb_per_owner: int = 51200  # uploads and artifacts; 0: no cap
    history_url: HistoryURL | None = None  # None: SQLite in the data dir
    history_days: int = 365
    redis_min_replicas: int = 0  # a submission is answered 202 once this many replicas have it

    @property
    def webhooks_enabled(self) -> bool:
        return bool(self.webhook_allow and self.webhook_secret)

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def history(self) -> HistoryURL:
        return self.history_url or HistoryURL("sqlite", str(self.data_dir / "history.sqlite3"))

    @property
    def redis_dir(self) -> Path:
        return self.data_dir / "redis"

    @property
    def retention_seconds(self) -> int:
        return self.retention_days * 86400

    def soft_limit(self, timeout: int) -> float:
        """Seconds after start when the job gets SIGTERM.

        The grace is capped at half the job's own timeout, so a short per-job timeout still
        gets a soft stop instead of being SIGKILLed (or TERMed) at once.
        """
        return timeout - min(self.kill_grace, timeout / 2)


def _int(name: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range; use {low}..{high}")
    return value


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; use 1 or 0")


def _path(name: str, raw: str) -> Path:
    if not raw.strip():
        raise ConfigError(f"{name} is empty; give a directory path")
    return Path(raw).expanduser().absolute()


def _tokens(raw: str | None) -> tuple[str, ...]:
    tokens = tuple(t.strip() for t in (raw or "").split(",") if t.strip())
    if not tokens:
        raise ConfigError(
            "REMOTE_CI_TOKEN is not set; set it to a long random secret "
            "(e.g. `export REMOTE_CI_TOKEN=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')`)"
        )
    for token in tokens:
        if len(token) < 8:
            raise ConfigError("REMOTE_CI_TOKEN: every token must be at least 8 characters long")
        if any(ch.isspace() or not ch.isprintable() for ch in token):
            raise ConfigError("REMOTE_CI_TOKEN: tokens may not contain spaces or control characters")
    return tokens


def load_project_tokens(path: Path, admin_tokens: tuple[str, ...]) -> tuple[ProjectToken, ...]:
    """The tokens file, checked; at start and again on SIGHUP."""
    try:
        found = load_tokens_file(path)
    except TokensFileError as exc:
        raise ConfigError(f"REMOTE_CI_TOKENS_FILE: {exc}") from None
    # A token that is both admin and project would make its jobs' owner ambiguous.
    admin_digests = {hash_token(t.encode()) for t in admin_tokens}
    for token in found:
        if token.digest in admin_digests:
            raise ConfigError(f"REMOTE_CI_TOKENS_FILE: project token {token.name!r} is also "
                              "in REMOTE_CI_TOKEN; give the project its own token")
    return found


def _redis_url(raw: str | None) -> str | None:
    if raw is None or not raw.strip():
        return None
    url = raw.strip()
    try:
        redis_conn.parse(url)
    except ValueError as exc:
        raise ConfigError(f"REMOTE_CI_REDIS_URL: bad redis URL: {exc}") from None
    return url


def _shell(raw: str | None) -> str:
    shell = (raw or "/bin/bash").strip()
    if os.path.isabs(shell) and os.access(shell, os.X_OK):
        return shell
    return "/bin/sh"


# variable -> (Settings field, lowest, highest)
_INT_SETTINGS: dict[str, tuple[str, int, int]] = {
    "REMOTE_CI_PORT": ("port", 0, 65535),
    "REMOTE_CI_CONCURRENCY": ("concurrency", 1, 256),
    "REMOTE_CI_JOB_TIMEOUT": ("job_timeout", 1, 7 * 86400),
    "REMOTE_CI_KILL_GRACE": ("kill_grace", 0, 3600),
    "REMOTE_CI_CANCEL_GRACE": ("cancel_grace", 0, 3600),
    "REMOTE_CI_DRAIN_TIMEOUT": ("drain_timeout", 0, 7 * 86400),
    "REMOTE_CI_RETENTION_DAYS": ("retention_days", 1, 3650),
    "REMOTE_CI_MAX_UPLOAD_MB": ("max_upload_mb", 1, 1_000_000),
    "REMOTE_CI_MAX_EXTRACT_MB": ("max_extract_mb", 1, 10_000_000),
    "REMOTE_CI_MAX_ARCHIVE_MEMBERS": ("max_archive_members", 1, 100_000_000),
    "REMOTE_CI_MAX_LOG_MB": ("max_log_mb", 1, 10_000_000),
    "REMOTE_CI_MAX_QUEUE": ("max_queue", 1, 10_000_000),
    "REMOTE_CI_MAX_FOLLOWERS": ("max_followers", 1, 1000),
    "REMOTE_CI_HTTP_THREADS": ("http_threads", 2, 1000),
    "REMOTE_CI_HTTP_IDLE_TIMEOUT": ("http_idle_timeout", 1, 3600),
    "REMOTE_CI_GIT_TIMEOUT": ("git_timeout", 1, 86400),
    "REMOTE_CI_MAX_ARTIFACT_MB": ("max_artifact_mb", 1, 10_000_000),
    "REMOTE_CI_WEBHOOK_TIMEOUT": ("webhook_timeout", 1, 60),
    "REMOTE_CI_WEBHOOK_ATTEMPTS": ("webhook_attempts", 1, 20),
    "REMOTE_CI_MAX_QUEUED_PER_OWNER": ("max_queued_per_owner", 0, 10_000_000),
    "REMOTE_CI_MAX_STORED_MB_PER_OWNER": ("max_stored_mb_per_owner", 0, 1_000_000_000),
    "REMOTE_CI_HISTORY_DAYS": ("history_days", 1, 36500),
    "REMOTE_CI_REDIS_MIN_REPLICAS": ("redis_min_replicas", 0, 100),
}
_PATH_SETTINGS = {
    "REMOTE_CI_WORKSPACE_DIR": "workspace_dir",
    "REMOTE_CI_DATA_DIR": "data_dir",
    "REMOTE_CI_WORK_DIR": "work_dir",
}


def load_settings(env: Mapping[str, str], *, require_token: bool = True) -> Settings:
    """Build Settings from an environment mapping; raise ConfigError naming the bad variable."""
    values: dict[str, object] = {}
    admin_tokens = _tokens(env.get("REMOTE_CI_TOKEN")) if require_token else ()
    values["tokens"] = admin_tokens
    values["redis_url"] = _redis_url(env.get("REMOTE_CI_REDIS_URL"))
    host = env.get("REMOTE_CI_HOST", "").strip()
    if host:
        values["host"] = host
    for name, (attr, low, high) in _INT_SETTINGS.items():
        raw = env.get(name)
        if raw is not None and raw.strip():
            values[attr] = _int(name, raw, low, high)
    for name, attr in _PATH_SETTINGS.items():
        raw = env.get(name)
        if raw is not None:
            values[attr] = _path(name, raw)
    values["shell"] = _shell(env.get("REMOTE_CI_SHELL"))
    values["git_allow_file"] = _bool("REMOTE_CI_GIT_ALLOW_FILE", env.get("REMOTE_CI_GIT_ALLOW_FILE", ""))
    node = env.get("REMOTE_CI_NODE_NAME", "").strip()
    if node:
        values["node_name"] = node
    raw_file = env.get("REMOTE_CI_TOKENS_FILE", "").strip()
    if raw_file:
        tokens_file = _path("REMOTE_CI_TOKENS_FILE", raw_file)
        values["tokens_file"] = tokens_file
        values["project_tokens"] = load_project_tokens(tokens_file, admin_tokens)
    values.update(_webhook_values(env))
    values.update(_parsed_values(env))
    settings = Settings(**values)  # type: ignore[arg-type]
    _check_consistency(settings)
    return settings


def _webhook_values(env: Mapping[str, str]) -> dict[str, object]:
    values: dict[str, object] = {}
    try:
        values["webhook_allow"] = parse_allowlist(env.get("REMOTE_CI_WEBHOOK_ALLOW"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    secret = env.get("REMOTE_CI_WEBHOOK_SECRET", "").strip()
    if secret and len(secret) < MIN_SECRET_CHARS:
        raise ConfigError(f"REMOTE_CI_WEBHOOK_SECRET must be at least {MIN_SECRET_CHARS} "
                          "characters; receivers verify deliveries with it")
    values["webhook_secret"] = secret or None
    raw = env.get("REMOTE_CI_WEBHOOK_RETRY_SECONDS", "").strip()
    if raw:
        try:
            delay = float(raw)
        except ValueError:
            raise ConfigError(f"REMOTE_CI_WEBHOOK_RETRY_SECONDS={raw!r} is not a number") from None
        if not 0.01 <= delay <= 3600:
            raise ConfigError(f"REMOTE_CI_WEBHOOK_RETRY_SECONDS={raw} is out of range; "
                              "use 0.01..3600 (the first retry's delay; later ones double)")
        values["webhook_retry_seconds"] = delay
    return values


# variable -> (Settings field, parser raising ValueError with the fix)
_PARSED_SETTINGS: dict[str, tuple[str, Callable[[str], object]]] = {
    "REMOTE_CI_JOB_UID_RANGE": ("job_uid_range", parse_uid_range),
    "REMOTE_CI_JOB_USER": ("job_user", named_user),
    "REMOTE_CI_HISTORY_URL": ("history_url", parse_history_url),
}


def _parsed_values(env: Mapping[str, str]) -> dict[str, object]:
    values: dict[str, object] = {}
    for name, (attr, parse) in _PARSED_SETTINGS.items():
        raw = env.get(name, "").strip()
        if raw:
            try:
                values[attr] = parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None
    return values
RETENTION_MARGIN = 3600  # seconds past the job timeout: copy, clone, artifacts, drain


def _check_consistency(settings: Settings) -> None:
    if settings.max_followers >= settings.http_threads:
        raise ConfigError(
            "REMOTE_CI_MAX_FOLLOWERS must be below REMOTE_CI_HTTP_THREADS, "
            "or log followers could take every API thread"
        )
    if settings.retention_seconds < settings.job_timeout + RETENTION_MARGIN:
        # The record's TTL is renewed when the job starts; it must outlive the run, or a
        # running job's record expires and its end is lost.
        raise ConfigError(
            f"REMOTE_CI_RETENTION_DAYS={settings.retention_days} ({settings.retention_seconds} s) "
            f"is too short for REMOTE_CI_JOB_TIMEOUT={settings.job_timeout}: a running job's "
            "record would expire before the job ends; keep the retention at least an hour "
            "longer than the job timeout"
        )
    if not is_node_name(settings.node_name):  # submissions name it in `host`
        raise ConfigError(f"REMOTE_CI_NODE_NAME {settings.node_name[:140]!r} must be "
                          f"{NODE_NAME_RULE.split(' (')[0]}; set it to this host's short name")
    if settings.redis_min_replicas and settings.redis_url is None:
        raise ConfigError("REMOTE_CI_REDIS_MIN_REPLICAS needs REMOTE_CI_REDIS_URL: the embedded "
                          "redis has no replicas, so no submission could be accepted")
    low, high = settings.job_uid_range
    if low <= os.geteuid() <= high:
        raise ConfigError(f"REMOTE_CI_JOB_UID_RANGE={low}-{high} holds the server's own uid "
                          f"{os.geteuid()}; jobs must never run as the server")

