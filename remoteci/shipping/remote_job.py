"""One job on a worker whose API is on another host: its upload, log and artifacts go by HTTP.

The executor calls these at the points where a worker sharing the API's disk would read the
uploads dir or leave files in its data dir. Every network wait is bounded; the job itself never
waits on the network while it runs (see log_shipper).
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from remoteci import events
from remoteci.artifacts.manifest import FILES, Manifest
from remoteci.config import Settings
from remoteci.errors import SourceError
from remoteci.shipping.api_client import ApiClient, Refused, Unreachable
from remoteci.shipping.log_shipper import LogShipper

COMPONENT = "executor"
NETWORK_WAIT = 300.0  # seconds an upload fetch or the artifacts may wait for the API to answer
LOG_WAIT = 300.0  # seconds the job's end waits for its log to reach the API
RETRY_MAX = 2.0
T = TypeVar("T")


class RemoteJob:
    """The API-facing side of one job; made only when REMOTE_CI_API_URL is set."""

    def __init__(self, settings: Settings, job_id: str, log_path: Path):
        assert settings.api_url is not None
        self.settings = settings
        self.job_id = job_id
        self.log_path = log_path
        self.client = ApiClient(settings.api_url, settings.tokens[0])
        self.shipper = LogShipper(ApiClient(settings.api_url, settings.tokens[0]), job_id,
                                  log_path).start()
        self.local_upload: Path | None = None

    def _retrying(self, what: str, action: Callable[[], T]) -> T:
        """An API that does not answer is waited for, up to NETWORK_WAIT; a refusal is final."""
        deadline = time.monotonic() + NETWORK_WAIT
        delay = 0.2
        while True:
            try:
                return action()
            except Unreachable as exc:
                if time.monotonic() + delay > deadline:
                    raise Refused(f"{what}: the API did not answer for {NETWORK_WAIT:g} s "
                                  f"({exc})") from None
                events.warning(COMPONENT, f"job {self.job_id}: {what}: {exc}; retrying")
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    def fetch_upload(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The payload with `path` on this host: the archive, fetched and checked."""
        local = self.settings.uploads_dir / f"{self.job_id}.upload"
        self.local_upload = local
        size = payload.get("size")
        try:
            self._retrying("fetching the upload", lambda: self.client.fetch_upload(
                self.job_id, local, size if isinstance(size, int) else None,
                payload.get("sha256")))
        except Refused as exc:
            raise SourceError(f"could not fetch the uploaded archive from the API: {exc}") from None
        return {**payload, "path": str(local)}

    def send_artifacts(self, kept_dir: Path, manifest: Manifest) -> str | None:
        """Send the kept files, then their manifest; None when all arrived, else why not."""
        try:
            for artifact in manifest.files:
                self._retrying(f"sending artifact {artifact.path!r}",
                               functools.partial(self.client.put_artifact, self.job_id,
                                                 artifact.path, kept_dir / FILES / artifact.path))
            body = {"files": [asdict(f) for f in manifest.files], "truncated": manifest.truncated}
            self._retrying("sending the artifacts' manifest",
                           lambda: self.client.commit_artifacts(self.job_id, body))
        except (Refused, OSError) as exc:
            events.error(COMPONENT, f"job {self.job_id}: artifacts not sent to the API, kept on "
                                    f"this host in {kept_dir}: {exc}")
            return f"could not send them to the API: {exc}"
        shutil.rmtree(kept_dir, ignore_errors=True)  # the API's copy is the one served
        return None

    def end(self, payload: dict[str, Any], give_up_at: float = float("inf")) -> int:
        """After the last log line: drop the upload (ours and the API's), wait for the log to
        arrive (up to LOG_WAIT, or `give_up_at` on the monotonic clock: a drain's end); return
        the log's final length."""
        if self.local_upload is not None:
            self.local_upload.unlink(missing_ok=True)
        if payload.get("mode") == "upload" and not payload.get("pipeline"):
            # A pipeline's archive serves all its jobs: it goes when the pipeline ends.
            try:
                self._retrying("deleting the upload", lambda: self.client.drop_upload(self.job_id))
            except Refused as exc:  # the API's sweep removes it after the retention
                events.warning(COMPONENT, f"job {self.job_id}: {exc}")
        self.client.close()
        final = os.stat(self.log_path).st_size
        wait = max(1.0, min(LOG_WAIT, give_up_at - time.monotonic()))
        if self.shipper.finish(wait) and self.shipper.complete:
            self.log_path.unlink(missing_ok=True)  # the API's copy is the log now
        elif self.shipper.failed is None:
            events.error(COMPONENT, f"job {self.job_id}: its log has not reached the API after "
                                    f"{wait:g} s ({self.shipper.sent} of {final} bytes); "
                                    "recording its end anyway, the rest follows when the API "
                                    "answers")
        return final
