"""`chanaxis report RUN`: the study's answers as rich tables, PNG figures and a JSON summary."""
from __future__ import annotations


def register(sub) -> None:
    from chanaxis.cli.options import add_params
    from chanaxis.report import ReportStage
    s = sub.add_parser("report", help=ReportStage.help)
    s.add_argument("run", help="run store (RUN.zarr) or an analyze folder")
    add_params(s, ReportStage.Params)
    s.set_defaults(func=run)


def run(a) -> None:
    from chanaxis.cli.options import given
    from chanaxis.report import ReportStage, report
    from chanaxis.study import resolve_store
    report(resolve_store(a.run), **given(a, ReportStage.Params))
