"""The study's report: numbers (summary), rich tables (terminal), PNG figures (figures), JSON beside the store."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..params import Params, param
from ..stage import Context, Stage, Unit, api, run_stage
from .summary import summarize


@dataclass(frozen=True)
class ReportParams(Params):
    figures: bool = param(True, "write the PNG figures beside the store")


class ReportStage(Stage):
    """The report: one unit that reads every node of the store, prints the tables and writes figures and JSON.
    It is never "done": rerunning it reprints the report of whatever the store holds now."""

    name = "report"
    needs = ("metrics",)
    Params = ReportParams
    help = "print the report of a run; write its figures and JSON summary"

    def units(self, run) -> list[Unit]:
        return [Unit("report")]

    def run_unit(self, run, unit: Unit, ctx: Context) -> None:
        from .terminal import render
        summary = summarize(run)
        render(summary, ctx.console)
        run = Path(run)
        if self.params.figures:
            from .figures import write_all
            summary["figures"] = [str(p) for p in write_all(run, summary)]
        (run.parent / f"{run.stem}_summary.json").write_text(json.dumps(summary, indent=2, default=str))
        ctx.memo(("report", str(run)), dict).update(summary)

    def finish(self, run, ctx: Context) -> dict:
        summary = dict(ctx.memo(("report", str(Path(run))), dict))
        ctx.forget("report")
        return summary

    def done(self, run) -> bool:
        return False


def report(run: str | Path, *, console=None, **params) -> dict:
    """Print the report of `run`, write its figures and `<run>_summary.json`; returns the summary."""
    return run_stage(ReportStage(**params), run, Context(progress=False, console=console))


api(ReportStage, report)

__all__ = ["report", "summarize", "ReportStage"]
