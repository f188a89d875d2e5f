"""Run one scenario of the reference harness (`bench.py` in BENCH_PEERS_DIR) against a server.

The harness is called from where it lives, never copied: both servers meet the same code.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from servers import TOKEN, Server, peers_dir


def run(server: Server, scenario: str, *args: str, timeout: float = 600) -> dict[str, Any]:
    cmd = [sys.executable, str(peers_dir() / "bench.py"), "--url", server.url, "--token", TOKEN,
           "--workspace-root", str(server.workspace_root), "--workspace", "tiny",
           scenario, *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"scenario": scenario, "error": f"rc={result.returncode}: {result.stderr[-800:]}"}
    doc: dict[str, Any] = json.loads(lines[-1])
    return doc
