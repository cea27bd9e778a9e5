"""Progress bars end exactly at their totals, durations read right, tables fold, every option and accessor method
says what it does."""
from __future__ import annotations

import argparse
import inspect
import io

import pytest
from rich.console import Console

import chanaxis
from chanaxis import progress
from chanaxis.progress import duration, progress_bar, record


@pytest.fixture()
def shown(monkeypatch):
    """Bars drawn into a string, as on a terminal."""
    buf = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=buf, force_terminal=True, width=100))
    return buf


def test_duration_reads_right():
    assert duration(0) == "under 1 s" and duration(0.4) == "under 1 s"
    assert duration(1.2) == "1 s" and duration(42) == "42 s"
    assert duration(150) == "2 min" and duration(45 * 60) == "45 min"
    assert duration(2 * 3600) == "2.0 h" and duration(4 * 86400) == "4.0 days"
    from chanaxis.study import human
    assert human(0.3) == "under 1 s" and human(240) == "4 min"  # the estimate table's, never "0 s"


def test_count_reads_whole_units():
    from types import SimpleNamespace

    def shown_as(done, total):
        return progress.Count().render(SimpleNamespace(completed=done, total=total)).plain
    assert shown_as(1034.9999999999998, 1035) == "1035/1035"  # a float sum a hair short: full, not 1034/1035
    assert shown_as(7.0, 7.9) == "7/8" and shown_as(7.9, 7.9) == "8/8"  # part-cells: N/N only when full
    assert shown_as(0, 48) == " 0/48"


def test_nested_bars_share_one_display(shown):
    with record() as finals, progress_bar() as outer:
        t = outer.add_task("outer", total=2)
        with progress_bar() as inner:  # a stage inside a stage: rows of the same display, gone when done
            i = inner.add_task("inner", total=3)
            inner.update(i, advance=3)
            assert [task.description for task in outer.tasks] == ["outer", "inner"]
        assert [task.description for task in outer.tasks] == ["outer"]
        outer.update(t, advance=2)
    assert [(f.description, f.completed, f.total) for f in finals] == [("inner", 3, 3), ("outer", 2, 2)]


def test_quiet_prints_no_bar(shown):
    with record() as finals, progress_bar(False) as bar:
        bar.update(bar.add_task("x", total=1), advance=1)
    assert shown.getvalue() == "" and finals == []


def test_in_unit_fractions_end_exactly_at_the_total(shown, tmp_path):
    """Units that report fractions of their work (0.1 × 10 sums to 0.9999…) still end the bar at its total."""
    from chanaxis.params import Params as NoParams
    from chanaxis.stage import Context, Stage, Unit, run_stage

    class Frac(Stage):
        name = "frac"
        Params = NoParams
        writes = False

        def units(self, run):
            return [Unit(f"u/{k}", k, work=3) for k in range(7)]

        def run_unit(self, run, unit, ctx):
            for _ in range(30):
                ctx.advance(0.1)
            tick = ctx.steps(11)
            for _ in range(11):
                tick()

    with record() as finals:
        run_stage(Frac(), tmp_path, Context())
    [f] = finals
    assert f.completed == f.total == 21


# ------------------------------------------------------------------------------------------- lesion and prune
@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    from chanaxis.stages.metrics import metrics
    out = tmp_path_factory.mktemp("bars") / "run.zarr"
    m = chanaxis.load_model("test_resnet", num_classes=10, image_size=32)
    chanaxis.capture(m, "synthetic", out, n_calibration=32, chunk_images=32, progress=False, loader_workers=0)
    metrics(out, only=("local", "target"), progress=False)
    return out, m


def test_lesion_and_prune_bars_end_at_their_totals(small_run, shown):
    from chanaxis.interventions.lesion import LesionStage, lesion
    from chanaxis.interventions.prune import PruneStage, prune
    run, model = small_run
    # 9 images in batches of 4: each pass reports 4/9 or 1/9 of a variant, floats whose plain sum falls short
    # of the total (the quick preset's 1034.9999… of 1035 shown as 1034/1035)
    lp = {"fraction": 0.01, "eval_images": 9, "batch_size": 4, "replace": False}
    with record() as finals:
        lesion(run, model=model, loader_workers=0, **lp)
    [f] = [f for f in finals if f.description == "lesion"]
    chans = chanaxis.open_run(run)["lesion"].sizes["unit"]
    assert f.total == chans  # one variant per lesioned channel (no replacements)
    assert f.completed == f.total
    pp = {"methods": ["magnitude", "random", "taylor"], "levels": [0.3, 0.6], "seeds": [42], "finetune_epochs": 1,
          "finetune_batches": 2, "eval_images": 8, "batch_size": 8, "n_resamples": 20, "taylor_images": 12}
    with record() as finals:
        prune(run, model=model, loader_workers=0, **pp)
    [f] = [f for f in finals if f.description == "prune"]
    assert f.total == pytest.approx(3 * 2 * 1)  # cells = methods × levels × seeds (one-shot and fine-tune each)
    assert f.completed == f.total
    assert "6/6" in shown.getvalue()
    [t] = [f for f in finals if f.description == "taylor scores"]  # the gradient pass before the cells
    assert t.total == 12 and t.completed == 12
    assert LesionStage(**lp).done(run) and PruneStage(**pp).done(run)


# ------------------------------------------------------------------------------------------- tables and help
def test_datasets_table_folds_long_cells(monkeypatch):
    import chanaxis.cli.main as cli

    from chanaxis.data import availability
    buf = io.StringIO()
    monkeypatch.setattr(cli, "out", Console(file=buf, width=80, force_terminal=False))
    assert cli.main(["datasets"]) == 0
    text = buf.getvalue()
    assert "…" not in text
    # the last column's pieces, line by line, joined: every path and URL is there whole
    cells = "".join(line.split("│")[-2] for line in text.splitlines() if line.count("│") >= 6)
    flat = "".join(cells.split())
    for av in availability():
        want = av.where if av.available else av.how_to_get
        assert "".join(want.split()) in flat, av.name
    fm = next(a for a in availability() if a.name == "fashion-mnist")
    assert "fashion-mnist" in (fm.where or fm.how_to_get)


def _subcommands():
    from chanaxis.cli.main import build_parser
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_every_option_has_help_and_fixed_sets_list_their_choices():
    found = _subcommands()
    assert {"analyze", "capture", "metrics", "lesion", "prune", "datasets", "models"} <= set(found)
    for name, parser in found.items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            what = f"chanaxis {name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help.strip() and action.help != argparse.SUPPRESS, f"{what}: no help"
            if action.choices:
                assert all(str(c) in action.help for c in action.choices) or "one of" in action.help, \
                    f"{what}: its choices are not in its help"
            shown_default = action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS)
            if shown_default:
                assert "default" in action.help, f"{what}: its default is not in its help"
    for name, parser in found.items():
        for flag in ("--preset", "--precision"):
            action = parser._option_string_actions.get(flag)
            if action is not None:  # argparse's own choices, or a stage parameter's (checked by its class)
                assert action.choices or "one of:" in action.help, f"chanaxis {name} {flag} lists no choices"
    assert found["analyze"]._option_string_actions["--preset"].choices
    device = found["analyze"]._option_string_actions["--device"]
    assert "cpu" in device.help and "cuda" in device.help and "default" in device.help


def test_every_public_accessor_method_has_a_docstring():
    from chanaxis.accessor import ChanaxisAccessor
    public = [n for n, v in vars(ChanaxisAccessor).items() if not n.startswith("_")
              and (inspect.isfunction(v) or isinstance(v, property))]
    assert public
    for n in public:
        v = getattr(ChanaxisAccessor, n)
        doc = inspect.getdoc(v.fget if isinstance(v, property) else v)
        assert doc and len(doc.strip()) > 20, f"ds.chanaxis.{n} has no docstring"
