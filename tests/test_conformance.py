"""The stage conformance suite (in the spirit of scikit-learn's `check_estimator`), run on every registered stage.

For each stage, on a tiny model and dataset: the same seed gives identical results; results do not depend on the
order units run in, nor on whether they share one process's memos (each unit in a fresh `Context`, as on a
cluster); the declared outputs are there with their dims and units; a run SIGKILLed in the middle of a unit and
rerun equals an uninterrupted one; a store made with other parameters is refused; an unknown parameter is refused
naming the nearest valid one. A stage registered without a case here fails the suite.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable

import pytest
from storecmp import arrays, differences

import chanaxis
from chanaxis import stage as S
from chanaxis.errors import ChanaxisError

MODEL = dict(num_classes=10, image_size=32, init_seed=0)


@dataclasses.dataclass
class Case:
    params: dict                                  # a tiny run
    other: dict | None                            # other parameters: their store must be refused (None: no config)
    base: str                                     # which prepared folder the stage runs on (see `bases`)
    where: str                                    # path of the stage's output inside that folder
    result: Callable[[Path], dict]                # name → array (or JSON text) that must not change
    inputs: Callable[[Path], dict] = lambda folder: {}


def _model():
    return chanaxis.load_model("test_resnet", **MODEL)


def _train_result(folder: Path) -> dict:
    import torch
    out = {}
    manifest = json.loads((folder / "manifest.json").read_text())
    for epoch, rel in manifest["checkpoints"].items():
        for k, v in torch.load(folder / rel, map_location="cpu").items():
            out[f"{epoch}/{k}"] = v.numpy()
    out["history"] = json.dumps([{k: v for k, v in h.items() if "time" not in k and k != "seconds"}
                                 for h in manifest["history"]], sort_keys=True)
    return out


def _report_result(run: Path) -> dict:
    summary = json.loads((run.parent / f"{run.stem}_summary.json").read_text())
    summary.pop("figures", None)
    summary.pop("run", None)
    return {"summary": json.dumps(summary, sort_keys=True, default=str)}


TRAIN = {"epochs": 1, "checkpoints": "0,1", "train_subset": 64, "eval_subset": 32, "batch_size": 32}
CASES: dict[str, Case] = {
    "train": Case(TRAIN, {**TRAIN, "seed": 1}, "empty", "train", _train_result,
                  inputs=lambda f: {"model_spec": "test_resnet", "dataset": "synthetic"}),
    "capture": Case({"n_calibration": 48, "chunk_images": 16}, {"n_calibration": 40, "chunk_images": 16}, "empty",
                    "run.zarr", lambda p: arrays(p, ["samples", "layers"]),
                    inputs=lambda f: {"dataset": "synthetic"}),
    "metrics": Case({"n_null": 1, "n_perm": 10, "n_triplets": 50, "geometry_images": 16},
                    {"n_null": 2, "n_perm": 10, "n_triplets": 50, "geometry_images": 16}, "captured", "run.zarr",
                    lambda p: arrays(p, ["metrics", "structure", "metrics_parts"])),
    "trajectory": Case({"n_calibration": 24, "chunk_images": 12, "geometry_images": 12},
                       {"n_calibration": 20, "chunk_images": 12, "geometry_images": 12}, "trained",
                       "trajectory.zarr", lambda p: arrays(p, ["metrics", "trajectory"]),
                       inputs=lambda f: {"run_dir": str(f / "train"), "dataset": "synthetic"}),
    "lesion": Case({"fraction": 0.1, "eval_images": 24, "batch_size": 64},
                   {"fraction": 0.2, "eval_images": 24, "batch_size": 64}, "measured", "run.zarr",
                   lambda p: arrays(p, ["lesion"])),
    "prune": Case({"methods": ["input_capture", "random"], "levels": [0.3], "seeds": [1, 2], "finetune_epochs": 1,
                   "finetune_batches": 1, "eval_images": 24, "batch_size": 16, "taylor_images": 16,
                   "n_resamples": 50},
                  {"methods": ["input_capture", "random"], "levels": [0.4], "seeds": [1, 2], "finetune_epochs": 1,
                   "finetune_batches": 1, "eval_images": 24, "batch_size": 16, "taylor_images": 16,
                   "n_resamples": 50}, "measured", "run.zarr", lambda p: arrays(p, ["pruning"])),
    "report": Case({"figures": False}, None, "measured", "run.zarr", _report_result),
}


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Prepared folders, made once: empty; a capture; a capture + metrics; a short training run."""
    root = tmp_path_factory.mktemp("conformance")
    out = {"empty": root / "empty"}
    out["empty"].mkdir()
    model = _model()
    cap = root / "captured"
    chanaxis.capture(model, "synthetic", cap / "run.zarr", n_calibration=48, chunk_images=16, progress=False)
    out["captured"] = cap
    meas = root / "measured"
    shutil.copytree(cap, meas)
    chanaxis.metrics(meas / "run.zarr", model=model, progress=False, **CASES["metrics"].params)
    out["measured"] = meas
    trained = root / "trained"
    chanaxis.train("test_resnet", "synthetic", trained / "train", progress=False, **TRAIN)
    out["trained"] = trained
    return out


def _context(folder: Path, case: Case, **kw) -> S.Context:
    return S.Context(device="cpu", progress=False, model=_model(), **case.inputs(folder), **kw)


def _run(name: str, folder: Path, params: dict | None = None, order=None, fresh_units: bool = False):
    """Run stage `name` in `folder` (a copy of a prepared base); returns the path it wrote."""
    case = CASES[name]
    stage = S.get(name)(**(case.params if params is None else params))
    path = folder / case.where
    if not fresh_units:
        S.run_stage(stage, path, _context(folder, case), order=order)
        return path
    # every unit in its own Context (own memos, own model build), as tasks on separate workers would run them
    stage.prepare(path, _context(folder, case))
    for unit in stage.units(path):
        ctx = _context(folder, case)
        stage.run_unit(path, unit, ctx)
        stage.flush(path, ctx)  # what a task does before it reports done
    stage.finish(path, _context(folder, case))
    return path


def _copy(bases, name: str, dest: Path) -> Path:
    shutil.copytree(bases[CASES[name].base], dest)
    return dest


def test_every_registered_stage_has_a_case():
    assert set(S.stages()) <= set(CASES), f"stages without a conformance case: {set(S.stages()) - set(CASES)}"


def test_order_follows_needs():
    order = S.order()
    for name, cls in S.stages().items():
        for need in cls.needs:
            assert order.index(need) < order.index(name), (need, name)


@pytest.fixture(scope="module")
def reference(bases, tmp_path_factory):
    """One uninterrupted run of each stage, in unit order, reused by the checks below."""
    cache = {}

    def get(name):
        if name not in cache:
            folder = _copy(bases, name, tmp_path_factory.mktemp(f"ref-{name}") / "f")
            cache[name] = CASES[name].result(_run(name, folder))
        return cache[name]
    return get


@pytest.mark.parametrize("name", list(CASES))
def test_same_seed_same_results(name, bases, reference, tmp_path):
    folder = _copy(bases, name, tmp_path / "again")
    assert not differences(reference(name), CASES[name].result(_run(name, folder)))


@pytest.mark.parametrize("name", list(CASES))
def test_results_independent_of_unit_order_and_process(name, bases, reference, tmp_path):
    rev = _copy(bases, name, tmp_path / "reversed")
    assert not differences(reference(name), CASES[name].result(_run(name, rev, order=lambda u: u[::-1])))
    fresh = _copy(bases, name, tmp_path / "fresh")
    assert not differences(reference(name), CASES[name].result(_run(name, fresh, fresh_units=True)))


@pytest.mark.parametrize("name", list(CASES))
def test_declared_outputs_present_with_dims_and_units(name, bases, tmp_path):
    cls = S.get(name)
    folder = _copy(bases, name, tmp_path / "f")
    path = _run(name, folder)
    tree = chanaxis.open_run(path) if cls.outputs else None
    for pattern, variables in cls.outputs.items():
        nodes = [n.path.strip("/") for n in tree.subtree if fnmatch.fnmatch(n.path.strip("/"), pattern)]
        assert nodes, f"{name}: no node {pattern}"
        for node in nodes:
            ds = tree[node].to_dataset()
            for var, (dims, units) in variables.items():
                assert var in ds, f"{name}: {node}/{var} missing"
                assert ds[var].dims == dims, f"{name}: {node}/{var} dims {ds[var].dims} != {dims}"
                assert ds[var].attrs.get("units") == units, f"{name}: {node}/{var} units"


KILLER = textwrap.dedent("""
    import os, signal, sys, json
    from pathlib import Path
    import torch, zarr.storage
    import chanaxis
    from chanaxis import stage as S
    sys.path.insert(0, {tests!r})
    import test_conformance as T
    name, folder = {name!r}, Path({folder!r})
    cls = S.get(name)
    state = {{"unit": 0, "armed": False, "writes": 0, "todo": 0}}

    def hit():
        if state["armed"]:
            state["writes"] += 1
            if state["writes"] >= 2:  # the unit has written part of its output: die now
                os.kill(os.getpid(), signal.SIGKILL)

    real_set = zarr.storage.LocalStore.set
    async def set_(self, key, value):
        hit()
        return await real_set(self, key, value)
    zarr.storage.LocalStore.set = set_
    real_save = torch.save
    def save(*a, **k):
        hit()
        return real_save(*a, **k)
    torch.save = save
    real_units = cls.units
    def units(self, run):
        out = real_units(self, run)
        state["todo"] = len(out)
        return out
    cls.units = units
    real_unit = cls.run_unit
    def run_unit(self, run, unit, ctx):
        state["armed"] = state["unit"] == (1 if state["todo"] > 1 else 0)  # the second unit, when there are two
        state["unit"] += 1
        real_unit(self, run, unit, ctx)
        if state["armed"]:  # a unit that wrote less than twice: die right after it, before the stage finishes
            os.kill(os.getpid(), signal.SIGKILL)
    cls.run_unit = run_unit
    T._run(name, folder)
    print("finished without being killed")
""")


@pytest.mark.parametrize("name", list(CASES))
def test_killed_in_a_unit_and_rerun_equals_uninterrupted(name, bases, reference, tmp_path):
    folder = _copy(bases, name, tmp_path / "killed")
    code = KILLER.format(tests=str(Path(__file__).parent), name=name, folder=str(folder))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == -9, f"{name}: the child was not killed: {r.returncode}\n{r.stdout}\n{r.stderr[-2000:]}"
    assert not S.get(name)(**CASES[name].params).done(folder / CASES[name].where), f"{name}: claims done"
    assert not differences(reference(name), CASES[name].result(_run(name, folder)))


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.other is not None])
def test_store_of_other_parameters_refused(name, bases, tmp_path):
    folder = _copy(bases, name, tmp_path / "f")
    _run(name, folder)
    with pytest.raises(ChanaxisError, match="other|another|different"):
        _run(name, folder, params=CASES[name].other)


@pytest.mark.parametrize("name", list(CASES))
def test_unknown_parameter_refused_naming_the_nearest(name):
    cls = S.get(name)
    field = dataclasses.fields(cls.Params)[0].name
    with pytest.raises(ChanaxisError, match=f"did you mean '{field}'"):
        cls(**{field + "x": 1})
