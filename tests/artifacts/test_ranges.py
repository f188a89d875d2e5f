"""Range headers and download names for artifacts: pure functions, one behaviour per test."""

from __future__ import annotations

import pytest

from remoteci.artifacts.routes import Unsatisfiable, byte_range, content_disposition


@pytest.mark.parametrize(("header", "expected"), [
    ("bytes=0-9", (0, 9)),
    ("bytes=10-", (10, 99)),
    ("bytes=-10", (90, 99)),
    ("bytes=-500", (0, 99)),
    ("bytes=50-5000", (50, 99)),
    ("BYTES = 1-2", (1, 2)),
    ("bytes=1-2,5-9", (1, 2)),  # only the first range is served
    ("bytes=9-1", None),  # malformed: ignored, the whole file goes out
    ("bytes=-", None),
    ("bytes=a-b", None),
    ("items=0-9", None),
    ("bytes=" + "9" * 30 + "-", None),
])
def test_byte_ranges(header: str, expected: tuple[int, int] | None) -> None:
    assert byte_range(header, 100) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=100-", 100), ("bytes=-0", 100),
                                              ("bytes=0-", 0), ("bytes=-5", 0)])
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        byte_range(header, size)


@pytest.mark.parametrize(("path", "plain"), [
    ("dist/app-1.0.whl", "app-1.0.whl"),
    ('r/evil"; x=1.txt', "evil___x_1.txt"),
    ("r/.bashrc", "bashrc"),
    ("r/résumé.pdf", "r_sum_.pdf"),
])
def test_download_names_are_safe(path: str, plain: str) -> None:
    value = content_disposition(path)
    assert value.startswith(f'attachment; filename="{plain}"; filename*=UTF-8\'\'')
    assert "/" not in value.split("filename*=")[1] and "\n" not in value
