"""Rich progress bars that turn into a silent stand-in when progress is off (tests, piping, --quiet).

One live display at a time: a bar opened while another is showing (a trajectory's per-checkpoint capture and
metrics, a stage inside a stage) adds its rows to the display already on screen and removes them when it closes,
so nested stages never print a second, frozen copy of their bars.

`record()` keeps every task's final (description, completed, total) as its bar closes: how tests check that a bar
ends exactly at its total. `duration(seconds)` is the one way a duration is written for people ("under 1 s",
"42 s", "7 min", "1.5 h").
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(stderr=True)

_active: list[Progress] = []            # the live display now on screen (at most one)
_recorders: list[list[Final]] = []    # open `record()` blocks


SPEED_WINDOW_S = 600.0  # the ETA's speed: over the last 10 min of updates (rich's 30 s swings with uneven units)


class Count(ProgressColumn):
    """"done/total" in whole units of work: the total rounded up (a resumed stage's remaining part-cells: 7.4 → 8),
    what is done rounded down, and N/N exactly when the bar is full — never before (a float sum of fractions one
    part in 1e9 short of the total counts as full)."""

    def render(self, task) -> Text:
        if task.total is None:
            return Text(f"{_floor(task.completed)}/?", style="progress.download")
        total = _ceil(task.total)
        full = task.completed >= task.total - _eps(task.total)
        done = total if full else min(_floor(task.completed), max(0, total - 1))
        return Text(f"{done:>{len(str(total))}}/{total}", style="progress.download")


def _eps(x: float) -> float:
    return 1e-9 * max(1.0, abs(x))


def _floor(x: float) -> int:
    return math.floor(x + _eps(x))


def _ceil(x: float) -> int:
    return math.ceil(x - _eps(x))


@dataclass(frozen=True)
class Final:
    """A bar's task as its bar closed: `completed` of `total` units of work."""
    description: str
    completed: float
    total: float | None


class _Silent:
    console = Console(quiet=True)

    def add_task(self, *a, **k):
        return 0

    def update(self, *a, **k):
        pass

    def advance(self, *a, **k):
        pass

    def remove_task(self, *a, **k):
        pass


def _keep(bar: Progress, tasks) -> None:
    for rec in _recorders:
        rec.extend(Final(str(t.description), t.completed, t.total) for t in bar.tasks if t.id in tasks)


class _Nested:
    """The rows of a bar opened inside another: tasks of the display on screen, removed when this bar closes."""

    def __init__(self, outer: Progress):
        self._outer = outer
        self.console = outer.console
        self.tasks: list = []

    def add_task(self, *a, **k):
        task = self._outer.add_task(*a, **k)
        self.tasks.append(task)
        return task

    def update(self, *a, **k):
        self._outer.update(*a, **k)

    def advance(self, *a, **k):
        self._outer.advance(*a, **k)

    def remove_task(self, task):
        if task in self.tasks:
            self.tasks.remove(task)
            self._outer.remove_task(task)

    def close(self) -> None:
        _keep(self._outer, set(self.tasks))
        for task in self.tasks:
            self._outer.remove_task(task)
        self.tasks = []


@contextlib.contextmanager
def progress_bar(enabled: bool = True):
    """A rich `Progress` (add_task/update/advance), or a silent stand-in when `enabled` is false. Inside another
    open bar it adds rows to that one (see the module docstring)."""
    if not enabled:
        yield _Silent()
        return
    if _active:
        nested = _Nested(_active[-1])
        try:
            yield nested
        finally:
            nested.close()
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), Count(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, transient=False,
                  speed_estimate_period=SPEED_WINDOW_S) as bar:
        _active.append(bar)
        try:
            yield bar
        finally:
            _active.remove(bar)
            _keep(bar, {t.id for t in bar.tasks})


@contextlib.contextmanager
def record():
    """Collect the `Final` state of every task of every bar that closes inside the block (a list, filled as they
    close). Bars still print as usual; `progress=False` shows and records nothing."""
    found: list[Final] = []
    _recorders.append(found)
    try:
        yield found
    finally:
        _recorders.remove(found)


def duration(seconds: float) -> str:
    """A duration for people: "under 1 s" only when it is, seconds up to 90 s, then minutes, hours, days."""
    s = max(0.0, float(seconds))
    if s < 1:
        return "under 1 s"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"
