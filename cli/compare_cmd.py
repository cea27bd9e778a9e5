"""`chanaxis compare RUN_OR_STUDY...`: the paper's claims across runs, one row per run."""
from __future__ import annotations


def register(sub) -> None:
    s = sub.add_parser("compare", help="the paper's claims across runs: a row per run, a column per claim "
                                       "(statistic, interval, verdict)")
    s.add_argument("runs", nargs="+", metavar="RUN_OR_STUDY", help="run stores (RUN.zarr) or analyze folders")
    s.add_argument("--json", action="store_true", help="print the comparison as JSON instead of a table")
    s.add_argument("--figures", metavar="DIR", default=None,
                   help="also write the runs' two-axis planes and pruning curves side by side (shared axes) as "
                        "DIR/compare_planes.png and DIR/compare_pruning.png (default: no figures)")
    s.set_defaults(func=run)


def run(a) -> None:
    import json
    import sys

    from chanaxis.cli.common import out

    from chanaxis.comparison import collect, figures, render
    got = collect(a.runs)
    written = figures(a.runs, a.figures, got) if a.figures else []
    if a.json:
        got["figures"] = [str(p) for p in written]
        sys.stdout.write(json.dumps(got, indent=2, default=str, ensure_ascii=False) + "\n")
    else:
        render(got, out)
        for p in written:
            out.print(f"figure: {p}")
