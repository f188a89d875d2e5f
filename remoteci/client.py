"""The CI-side client (standard library only). Placeholder until the client lands."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str]) -> int:
    print("remoteci.py submit: not available in this build", file=sys.stderr)
    return 2
