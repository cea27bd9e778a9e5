"""The study's report: numbers (summary), rich tables (terminal), PNG figures (figures), JSON beside the store."""
from __future__ import annotations

import json
from pathlib import Path

from .summary import summarize


def report(run: str | Path, console=None, figures: bool = True) -> dict:
    """Print the report of `run`, write its figures and `<run>_summary.json`; returns the summary."""
    from .terminal import render
    summary = summarize(run)
    render(summary, console)
    run = Path(run)
    if figures:
        from .figures import write_all
        summary["figures"] = [str(p) for p in write_all(run, summary)]
    (run.parent / f"{run.stem}_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


__all__ = ["report", "summarize"]
