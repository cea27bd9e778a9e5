"""The study's report: numbers (summary), rich tables (terminal), PNG figures (figures), JSON beside the store."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ChanaxisError
from ..locations import is_url, location
from ..params import Params, param
from ..stage import Context, Stage, Unit, api, run_stage
from .summary import summarize


@dataclass(frozen=True)
class ReportParams(Params):
    figures: bool = param(True, "write the PNG figures")
    out_dir: str | None = param(None, "folder for the JSON summary and the figures", none="beside the store",
                                aliases=("--figures-dir",))


class ReportStage(Stage):
    """The report: one unit that reads every node of the store, prints the tables and writes figures and JSON.
    It is never "done": rerunning it reprints the report of whatever the store holds now. It only reads the store,
    so it works on a read-only one; where its output folder is not writable it says so and writes nothing."""

    name = "report"
    needs = ("metrics",)
    Params = ReportParams
    help = "print the report of a run; write its figures and JSON summary"
    writes = False

    def prepare(self, run, ctx: Context) -> None:
        from .. import store
        grp = store.open_group(run)
        if store.stage_state(grp, "metrics") != "done" or store.METRICS not in grp:
            done = store.stage_state(grp, "capture") == "done"
            raise ChanaxisError(f"'{run}' has no finished metrics to report; run `chanaxis metrics {run}` first" if
                                done else f"'{run}' has no finished capture; run `chanaxis capture MODEL --dataset D "
                                f"--out {run}`, then `chanaxis metrics {run}`")

    def units(self, run) -> list[Unit]:
        return [Unit("report")]

    def run_unit(self, run, unit: Unit, ctx: Context) -> None:
        from .terminal import render
        summary = summarize(run)
        render(summary, ctx.console)
        run = location(run)
        where = location(self.params.out_dir) if self.params.out_dir else run.parent
        if not writable(where):
            say = ctx.console.print if ctx.console is not None else print
            say(f"note: '{where}' is not writable: no figures or JSON summary written (pass --out-dir DIR)")
        else:
            if self.params.figures:
                from .figures import write_all
                summary["figures"] = [str(p) for p in write_all(run, summary, where)]
            (where / f"{run.stem}_summary.json").write_text(json.dumps(summary, indent=2, default=str))
        ctx.memo(("report", str(run)), dict).update(summary)

    def finish(self, run, ctx: Context) -> dict:
        summary = dict(ctx.memo(("report", str(location(run))), dict))
        ctx.forget("report")
        return summary

    def done(self, run) -> bool:
        return False


def writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return is_url(folder) or os.access(folder, os.W_OK)


def report(run: str | Path, *, console=None, **params) -> dict:
    """Print the report of `run`, write its figures and `<run>_summary.json`; returns the summary."""
    return run_stage(ReportStage(**params), run, Context(progress=False, console=console))


api(ReportStage, report)

__all__ = ["report", "summarize", "ReportStage"]
