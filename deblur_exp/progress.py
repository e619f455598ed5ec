"""Progress on long work: a bar on a terminal; in a log file or a pipe, a few lines instead of a flood of
carriage-return updates (a log read later must still say what the run was doing and how far it got)."""

from __future__ import annotations

import logging
import sys
from typing import Iterable, Iterator, TypeVar

from tqdm import tqdm

Item = TypeVar("Item")
log = logging.getLogger("deblur_exp")


def bar_off(wanted: bool) -> bool | None:
    """tqdm's ``disable``: no bar when not wanted; otherwise None, which shows a bar on a terminal only."""
    return None if wanted else True


def tracked(items: Iterable[Item], desc: str, total: int, unit: str = "item") -> Iterator[Item]:
    """``items`` with a bar on a terminal, or a log line at every quarter of ``total`` (4 or more) elsewhere."""
    if sys.stderr.isatty():
        yield from tqdm(items, desc=desc, total=total, unit=unit, leave=False)
        return
    # a line per quarter; a job of a few items is not long work and says nothing
    marks = {round(total * quarter / 4) for quarter in range(1, 5)} if total >= 4 else set()
    for done, item in enumerate(items, start=1):
        yield item
        if done in marks:
            log.info("%s: %d/%d %ss", desc, done, total, unit)


def log_scored(label: str, done: int, total: int, psnr: dict[str, float]) -> None:
    """A line per model scored, on a terminal and in a log alike: scoring a model on whole images takes seconds to
    minutes, and the line says how far a comparison got and what each model scored on the way."""
    scores = ", ".join(f"{name} {value:.2f} dB" for name, value in psnr.items())
    log.info("scored %s (%d/%d): PSNR %s", label, done, total, scores)
