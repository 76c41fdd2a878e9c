"""`python -m dllmserve.cli` (how `serve` and the tests start child processes)."""

import sys

from dllmserve.cli import main

sys.exit(main())
