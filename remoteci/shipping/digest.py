"""Size and sha256 of a file, read in large pieces: what an upload's copy is checked against."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def file_digest(path: Path) -> tuple[int, str]:
    with open(path, "rb", buffering=0) as f:
        digest = hashlib.file_digest(f, "sha256")  # releases the GIL while it hashes
        return os.fstat(f.fileno()).st_size, digest.hexdigest()
