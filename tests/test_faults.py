"""Bad input and faults, table-driven: each case gives a one-line error (never a traceback) or a correct result,
touches no file outside chanaxis's own stores, and leaves no store that claims a stage done without its node.

Every case runs in a fresh folder holding what a user's project folder holds: notes, a zarr store written by xarray
(v3 and v2), a folder with a zarr.json among other files, and a finished chanaxis store (capture + metrics).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

import chanaxis
from chanaxis.cli.main import main
from chanaxis.errors import ChanaxisError
from chanaxis.safety import is_chanaxis_store, lock_file

SMALL = ["--n-calibration", "16", "--chunk-images", "16"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny store (capture + local/target metrics), copied into every case's folder."""
    out = tmp_path_factory.mktemp("faults") / "run.zarr"
    model = chanaxis.load_model("test_resnet", num_classes=10, image_size=32, init_seed=0)
    chanaxis.capture(model, "synthetic", out, n_calibration=32, chunk_images=16, progress=False)
    chanaxis.metrics(out, only="local,target", progress=False, model=model)
    return out


@pytest.fixture
def project(tmp_path, finished, monkeypatch):
    """A user's project folder, as the current directory."""
    (tmp_path / "notes.txt").write_text("thesis notes")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "train.py").write_text("print('mine')")
    ds = xr.Dataset({"x": ("t", np.arange(4.0))})
    ds.to_zarr(tmp_path / "theirs_v3.zarr", zarr_format=3, consolidated=False)
    ds.to_zarr(tmp_path / "theirs_v2.zarr", zarr_format=2, consolidated=False)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    zarr.open_group(str(mixed), mode="w")
    (mixed / "notes.md").write_text("keep me")
    shutil.copytree(finished, tmp_path / "run.zarr")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _snapshot(root: Path) -> dict:
    """Every file outside chanaxis stores: path → (size, mtime)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        if d != root and is_chanaxis_store(d):
            dirnames[:] = []
            continue
        for f in filenames:
            st = (d / f).stat()
            out[str((d / f).relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def _finished_stores_complete(root: Path) -> None:
    for dirpath, dirnames, _ in os.walk(root):
        d = Path(dirpath)
        if not is_chanaxis_store(d):
            continue
        dirnames[:] = []
        g = zarr.open_group(str(d), mode="r")
        status = dict(g.attrs.get("status", {}))
        if status.get("capture") == "done":
            assert np.asarray(g["samples/chunk_done"][...]).all(), d
        for stage, node in (("metrics", "metrics"), ("lesion", "lesion"), ("pruning", "pruning")):
            if status.get(stage) == "done":
                assert node in g, (d, node)


def _cli(project: Path, capsys, argv: list[str]) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own refusal (usage + one error line)
        rc = e.code
    err = capsys.readouterr().err
    return rc, err


# (argv, what the error must say); every one must exit 2 with one error line
CLI_CASES = [
    (["capture", "test_resnet", "-d", "synthetic", "-o", "a.zarr", "--n-calibration", "0"], "must be ≥ 2"),
    (["capture", "test_resnet", "-d", "synthetic", "-o", "a.zarr", "--n-calibration", "-5"], "must be ≥ 2"),
    (["capture", "test_resnet", "-d", "synthetic", "-o", "a.zarr", "--n-calibration", "1"], "must be ≥ 2"),
    (["capture", "test_resnet", "-d", "synthetic", "-o", "a.zarr", "--spatial-samples", "0"], "must be ≥ 1"),
    (["capture", "test_resnet", "-d", "synthetic", "-o", "a.zarr", "--batch-size", "0"], "must be ≥ 1"),
    (["capture", "test_resnet", "-d", "synthetic", "-o", "a.zarr", "--batch-size", "-3"], "must be ≥ 1"),
    (["capture", "test_resnet", "-d", "synthetic", "-o", "a.zarr", "--dtype", "float64"], "float16"),
    (["capture", "test_resnet", "-d", "synthetic", "-o", "a.zarr", "--image-size", "0"], "image_size"),
    (["capture", "test_resnet", "-d", "synthetic", "-o", "a.zarr", "--image-size", "3"], "image_size"),
    (["capture", "test_resnet", "-d", "synthetic", "-o", "a.zarr", "--num-classes", "0"], "num_classes"),
    (["capture", "test_resnet", "-d", "synthetic", "-o", "a.zarr", "--num-classes", "-1"], "num_classes"),
    (["capture", "test_resnet", "-d", "synthetic", "-o", "a.zarr", "--n-calibraton", "3"], "n-calibration"),
    (["capture", "resnt18", "-d", "synthetic", "-o", "a.zarr"], "did you mean"),
    (["capture", "test_resnet", "-d", "syntetic", "-o", "a.zarr"], "did you mean"),
    (["capture", "test_resnet", "-d", "data/imgs", "-o", "a.zarr"], "does not exist"),
    (["capture", "test_resnet", "-d", "synthetic", "-o", "notes.txt", *SMALL], "is a file"),
    (["capture", "test_resnet", "-d", "synthetic", "-o", ".", *SMALL], "current directory"),
    (["capture", "test_resnet", "-d", "synthetic", "-o", ".", "--overwrite", *SMALL], "current directory"),
    (["capture", "test_resnet", "-d", "synthetic", "-o", "theirs_v3.zarr", *SMALL], "not a chanaxis run store"),
    (["capture", "test_resnet", "-d", "synthetic", "-o", "theirs_v3.zarr", "--overwrite", *SMALL], "not a chanaxis"),
    (["capture", "test_resnet", "-d", "synthetic", "-o", "theirs_v2.zarr", "--overwrite", *SMALL], "not a chanaxis"),
    (["capture", "test_resnet", "-d", "synthetic", "-o", "mixed", "--overwrite", *SMALL], "not a chanaxis"),
    (["capture", "test_resnet", "-d", "synthetic", "-o", "code", "--overwrite", *SMALL], "not a chanaxis"),
    (["capture", "test_resnet", "-d", "synthetic", "-o", "run.zarr", *SMALL], "another config"),
    (["capture", "test_resnet", "-d", "synthetic", "-o", "/", "--overwrite", *SMALL], "filesystem root"),
    (["capture", "test_resnet", "-d", "synthetic", "-o", "a.zarr", "--device", "tpu"], "unknown --device"),
    (["metrics", "nothing.zarr"], "no run store"),
    (["metrics", "theirs_v3.zarr"], "no finished capture"),
    (["metrics", "run.zarr", "--only", "local,bogus"], "bogus"),
    (["metrics", "run.zarr", "--n-null", "0"], "must be ≥ 1"),
    (["metrics", "run.zarr", "--modularity-backend", "foo"], "igraph"),
    (["metrics", "run.zarr", "--only", "local,target", "--n-null", "3"], "other parameters"),
    (["lesion", "run.zarr", "--fraction", "0"], "fraction"),
    (["lesion", "run.zarr", "--fraction", "1.5"], "fraction"),
    (["lesion", "run.zarr", "--eval-images", "0"], "eval_images"),
    (["lesion", "run.zarr", "--batch-size", "0"], "batch_size"),
    (["lesion", "theirs_v3.zarr"], "chanaxis metrics theirs_v3.zarr"),
    (["prune", "run.zarr", "--lr", "-1"], "lr"),
    (["prune", "run.zarr", "--levels", "1.5"], "levels"),
    (["prune", "run.zarr", "--methods", "bogus"], "bogus"),
    (["prune", "run.zarr", "--batch-size", "0"], "batch_size"),
    (["report", "nothing.zarr"], "no run store"),
    (["analyze", "test_resnet", "-d", "synthetic", "--preset", "fast"], "invalid choice"),
    (["analyze", "test_resnet", "-d", "synthetic", "--stages", "train,lesions", "-o", "s"], "unknown stage"),
    (["analyze", "test_resnet", "-d", "synthetic", "--set", "bogus", "-o", "s"], "STAGE.PARAM=VALUE"),
    (["analyze", "test_resnet", "-d", "synthetic", "--set", "prune.lr=-1", "-o", "s"], "lr"),
    (["analyze", "test_resnet", "-d", "synthetic", "--set", "lesion.fractoin=0.1", "-o", "s"], "did you mean"),
    (["analyze", "test_resnet", "-d", "synthetic", "--set", "lesions.fraction=0.1", "-o", "s"], "did you mean"),
    (["analyze", "test_resnet", "-d", "synthetic", "-o", "code"], "not empty"),
]


@pytest.mark.parametrize("argv,needle", CLI_CASES, ids=[" ".join(a[:1] + a[3:6]) for a, _ in CLI_CASES])
def test_cli_refuses_with_one_line(project, capsys, argv, needle):
    before = _snapshot(project)
    rc, err = _cli(project, capsys, argv)
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if "error" in l]
    assert len(lines) == 1 and needle in err, err
    assert _snapshot(project) == before
    _finished_stores_complete(project)


def test_report_without_metrics_says_what_to_run(project, capsys):
    model = chanaxis.load_model("test_resnet", num_classes=10, image_size=32, init_seed=0)
    chanaxis.capture(model, "synthetic", "bare.zarr", n_calibration=16, chunk_images=16, progress=False)
    rc, err = _cli(project, capsys, ["report", "bare.zarr"])
    assert rc == 2 and "chanaxis metrics bare.zarr" in err


def test_deleted_chunk_is_an_error_and_capture_repairs_it(project):
    model = chanaxis.load_model("test_resnet", num_classes=10, image_size=32, init_seed=0)
    run = project / "run.zarr"
    layer = model.graph.names[2]
    ref = chanaxis.open_run(run)[f"layers/{layer}"]["local"].values
    chunk = sorted((run / "layers" / layer / "local" / "c").rglob("*"))[-1]
    chunk.unlink()
    with pytest.raises(ChanaxisError, match=f"chunk 1 of layer '{layer}'.*rerun the same `chanaxis capture`"):
        chanaxis.metrics(run, only="local", overwrite=True, progress=False, model=model)
    chanaxis.capture(model, "synthetic", run, n_calibration=32, chunk_images=16, progress=False)
    np.testing.assert_array_equal(chanaxis.open_run(run)[f"layers/{layer}"]["local"].values, ref)


def test_altered_chunk_bytes_are_caught(project):
    model = chanaxis.load_model("test_resnet", num_classes=10, image_size=32, init_seed=0)
    run = project / "run.zarr"
    layer = model.graph.names[0]
    chunk = sorted(p for p in (run / "layers" / layer / "local" / "c").rglob("*") if p.is_file())[0]
    raw = bytearray(chunk.read_bytes())
    raw[100] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with pytest.raises(ChanaxisError, match="missing or damaged"):
        chanaxis.metrics(run, only="local", overwrite=True, progress=False, model=model)


def test_nan_weights_stop_capture_naming_the_layer(project):
    model = chanaxis.load_model("test_resnet", num_classes=10, image_size=32, init_seed=0)
    name = model.graph.names[3]
    with torch.no_grad():
        dict(model.module.named_modules())[name].weight[0, 0, 0, 0] = float("nan")
    model.refresh_graph()
    with pytest.raises(ChanaxisError, match=f"layer '{name}' has NaN or infinite weights"):
        chanaxis.capture(model, "synthetic", "nan.zarr", n_calibration=16, progress=False)
    assert not (project / "nan.zarr").exists()


def test_nan_activations_stop_capture_naming_the_first_layer(project):
    model = chanaxis.load_model("test_resnet", num_classes=10, image_size=32, init_seed=0)
    name = model.graph.names[1]
    bn = dict(model.module.named_modules())[model.graph[model.graph.names[0]].norm_module]
    with torch.no_grad():
        bn.running_var.fill_(-1.0)  # sqrt of a negative variance: NaN downstream of the first layer
    with pytest.raises(ChanaxisError, match=f"layer '{name}' outputs NaN"):
        chanaxis.capture(model, "synthetic", "nanact.zarr", n_calibration=16, chunk_images=16, progress=False)
    g = zarr.open_group("nanact.zarr")
    assert g.attrs["status"].get("capture") != "done"


def test_float16_overflow_is_named(project):
    model = chanaxis.load_model("test_resnet", num_classes=10, image_size=32, init_seed=0)
    first = model.graph.names[0]
    with torch.no_grad():
        dict(model.module.named_modules())[first].weight.mul_(1e6)
    model.refresh_graph()
    with pytest.raises(ChanaxisError, match="float16's range"):
        chanaxis.capture(model, "synthetic", "h.zarr", n_calibration=16, chunk_images=16, dtype="float16",
                         progress=False)


def test_a_live_writer_holds_the_store(project):
    lock = lock_file(project / "run.zarr")
    lock.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "since": "earlier"}))
    with pytest.raises(ChanaxisError, match=f"being written by process {os.getppid()}"):
        chanaxis.metrics(project / "run.zarr", only="local,target", progress=False)
    assert lock.exists()


def test_a_stale_lock_is_taken_over(project):
    lock = lock_file(project / "run.zarr")
    lock.write_text(json.dumps({"pid": 2 ** 22 + 12345, "host": socket.gethostname(), "since": "earlier"}))
    before = chanaxis.open_run(project / "run.zarr")["metrics"]["input_capture"].values
    model = chanaxis.load_model("test_resnet", num_classes=10, image_size=32, init_seed=0)
    chanaxis.metrics(project / "run.zarr", only="local,target", progress=False, model=model)
    assert not lock.exists()
    np.testing.assert_array_equal(chanaxis.open_run(project / "run.zarr")["metrics"]["input_capture"].values, before)


def test_overwrite_replaces_only_a_pure_chanaxis_store(project):
    model = chanaxis.load_model("test_resnet", num_classes=10, image_size=32, init_seed=0)
    (project / "run.zarr" / "my_notes.txt").write_text("mine")
    with pytest.raises(ChanaxisError, match="also holds files chanaxis did not write"):
        chanaxis.capture(model, "synthetic", "run.zarr", n_calibration=16, overwrite=True, progress=False)
    assert (project / "run.zarr" / "my_notes.txt").read_text() == "mine"
    (project / "run.zarr" / "my_notes.txt").unlink()
    chanaxis.capture(model, "synthetic", "run.zarr", n_calibration=16, chunk_images=16, overwrite=True,
                     progress=False)
    assert chanaxis.open_run("run.zarr")["samples"].sizes["image"] == 16


def test_imagefolder_by_path_is_found_from_any_directory(project, monkeypatch):
    from PIL import Image
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        d = project / "data" / "imgs" / cls
        d.mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(d / f"{i}.png")
    model = chanaxis.load_model("test_resnet", num_classes=2, image_size=32, init_seed=0)
    chanaxis.capture(model, "data/imgs", project / "imgs.zarr", n_calibration=8, chunk_images=8, progress=False)
    elsewhere = project / "code"
    monkeypatch.chdir(elsewhere)
    from chanaxis.reload import dataset_from_store
    h = dataset_from_store(project / "imgs.zarr")
    assert len(h.dataset) == 12
    shutil.move(str(project / "data"), str(project / "moved"))
    with pytest.raises(ChanaxisError, match="not there any more"):
        dataset_from_store(project / "imgs.zarr")


def test_one_class_target_is_undefined_and_local_correlations_exact(project):
    """A one-output model on a one-class folder: the margin T has no other class, so every target metric is NaN
    and said to be; the local metrics and the Spearman ρ among them are what they are on their own (they were
    stored as 0 when rows with any NaN metric were dropped together)."""
    from PIL import Image
    from scipy.stats import spearmanr
    rng = np.random.default_rng(0)
    (project / "one" / "only").mkdir(parents=True)
    for i in range(24):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(project / "one" / "only" / f"{i}.png")
    model = chanaxis.load_model("test_resnet", num_classes=1, image_size=32, init_seed=0)
    run = chanaxis.capture(model, "one", "one.zarr", n_calibration=24, chunk_images=12, progress=False)
    chanaxis.metrics(run, model=model, progress=False, n_null=1, n_perm=10, n_triplets=50, geometry_images=8)
    tree = chanaxis.open_run(run)
    m = tree["metrics"].to_dataset().compute()
    assert np.isnan(m["task_info"].values).all() and m.attrs["target"].startswith("undefined")
    assert np.isfinite(m["input_capture"].values).all()
    s = tree["structure"].to_dataset().compute()
    layer = str(s.layer.values[-1])
    sel = m.layer.values == layer
    want = spearmanr(m["input_capture"].values[sel], m["peer_overlap"].values[sel]).statistic
    got = float(s["spearman"].sel(layer=layer, metric="input_capture", metric2="peer_overlap"))
    assert got == pytest.approx(want, abs=1e-6) and abs(got) > 0
    assert np.isnan(s["ari"].values).all() and np.isnan(s["q_s"].values).all()
    assert np.isfinite(s["q_r"].values).all()


def test_report_reads_only_and_skips_unwritable_outputs(project, capsys, monkeypatch):
    """report takes no lock and writes nothing into the store; where its output folder cannot be written (a
    read-only mount: as root here, simulated) it says so and still prints the report."""
    import chanaxis.report as rep
    before = {p: p.stat().st_mtime_ns for p in (project / "run.zarr").rglob("*")}
    real = rep.writable
    monkeypatch.setattr(rep, "writable", lambda folder: False)
    rc = main(["report", "run.zarr"])
    out = capsys.readouterr().out
    assert rc == 0
    assert not (project / "run_summary.json").exists() and not (project / "run_figures").exists()
    assert {p: p.stat().st_mtime_ns for p in (project / "run.zarr").rglob("*")} == before
    assert "is not writable" in out
    monkeypatch.setattr(rep, "writable", real)
    assert main(["report", "run.zarr", "--out-dir", str(project / "elsewhere"), "--no-figures"]) == 0
    assert (project / "elsewhere" / "run_summary.json").is_file()


def test_capture_refuses_up_front_when_the_disk_lacks_the_space(project, monkeypatch):
    import collections
    import chanaxis.stages.capture as cap
    from chanaxis.stages.capture import store_bytes
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(cap.shutil, "disk_usage", lambda p: usage(10 ** 9, 10 ** 9 - 1000, 1000))
    model = chanaxis.load_model("test_resnet", num_classes=10, image_size=32, init_seed=0)
    with pytest.raises(ChanaxisError, match=r"needs about [\d.]+ GB and .* has 0.00 GB free"):
        chanaxis.capture(model, "synthetic", "big.zarr", n_calibration=64, progress=False)
    assert not (project / "big.zarr").exists()
    layers = {l.name: (min(16, l.out_hw[0] * l.out_hw[1]), l.c_out) for l in model.graph.layers}
    written = sum(p.stat().st_size for p in (project / "run.zarr").rglob("*") if p.is_file() and "/c/" in str(p)
                  and ("local" in str(p) or "gap" in str(p)))
    assert written <= store_bytes(32, layers, "float32", 10)  # the estimate bounds what a capture writes
