"""The retention sweep of a data dir, the same on a worker's supervisor and on a lone `api`."""

from __future__ import annotations

import os
import time
from pathlib import Path

from remoteci.config import Settings
from remoteci.system.old_files import sweep_data_dirs


def test_entries_older_than_the_retention_go_and_newer_ones_stay(tmp_path: Path) -> None:
    settings = Settings(tokens=("t" * 16,), data_dir=tmp_path, retention_days=7)
    now = time.time()
    old = now - 8 * 86400
    made = {}
    for sub in ("logs", "uploads", "artifacts"):
        (tmp_path / sub).mkdir()
        for age, name in ((old, "old"), (now, "new")):
            path = tmp_path / sub / name
            if sub == "artifacts":
                (path / "files").mkdir(parents=True)
                (path / "files" / "a.txt").write_text("x")
            else:
                path.write_text("x")
            os.utime(path, (age, age))
            made[(sub, name)] = path
    assert sweep_data_dirs(settings, now) == 3
    for (_, name), path in made.items():
        assert path.exists() == (name == "new"), path
