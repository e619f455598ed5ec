"""What the command-line scripts share: logging setup and turning user errors into one line."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Callable

from deblur_exp.config import REPO_ROOT
from deblur_exp.errors import DeblurError


def default_data_dir() -> Path:
    """The same rule as ``paths.data_dir``: $DEBLUR_DATA_DIR, else data/ in the repository."""
    return Path(os.environ.get("DEBLUR_DATA_DIR", REPO_ROOT / "data"))


def run_cli(main: Callable[[], int]) -> None:
    """Run ``main``; a DeblurError becomes ``error: <message>`` and exit status 2, never a traceback."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(levelname)s] %(message)s", datefmt="%H:%M:%S")
    try:
        status = main()
    except DeblurError as exc:
        print(f"error: {exc}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = 130
    sys.exit(status)
