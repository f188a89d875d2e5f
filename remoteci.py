#!/usr/bin/env python3
"""Remote CI: `python remoteci.py serve | api | worker | submit`."""

import sys

from remoteci.cli import main

if __name__ == "__main__":
    sys.exit(main())
