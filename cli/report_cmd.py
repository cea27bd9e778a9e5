"""`chanaxis report RUN`: the study's answers as rich tables, PNG figures and a JSON summary."""
from __future__ import annotations


def register(sub) -> None:
    s = sub.add_parser("report", help="print the report of a run; write its figures and JSON summary")
    s.add_argument("run", help="run store (RUN.zarr) or an analyze folder")
    s.add_argument("--no-figures", action="store_true")
    s.set_defaults(func=run)


def run(a) -> None:
    from chanaxis.report import report
    from chanaxis.stages.analyze import resolve_store
    report(resolve_store(a.run), figures=not a.no_figures)
