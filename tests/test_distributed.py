"""Stages' units as tasks of a real dask.distributed cluster (worker processes, not threads).

On a tiny model: capture with `workers=2` equals the in-process run bit for bit; metrics, lesion and pruning on a
cluster equal in-process to 1e-10; a worker SIGKILLed in the middle of a unit still ends equal; a unit already done
is never submitted again.
"""
from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import distributed
import numpy as np
import pytest
from storecmp import arrays, differences

import chanaxis
from chanaxis import distributed as D
from chanaxis import stage as S

MODEL = {"num_classes": 10, "image_size": 32, "init_seed": 0}
CAPTURE = {"n_calibration": 48, "chunk_images": 16}
METRICS = {"n_null": 1, "n_perm": 10, "n_triplets": 50, "geometry_images": 16}
LESION = {"fraction": 0.1, "eval_images": 24, "batch_size": 64}
PRUNE = {"methods": ["input_capture", "random"], "levels": [0.3], "seeds": [1, 2], "finetune_epochs": 1,
         "finetune_batches": 1, "eval_images": 24, "batch_size": 16, "taylor_images": 16, "n_resamples": 50}


def _model():
    return chanaxis.load_model("test_resnet", **MODEL)


@pytest.fixture(scope="module")
def client():
    """One real LocalCluster of 2 single-threaded worker processes for the module."""
    with D.kept_environ():  # dask leaves OMP_NUM_THREADS=1… in os.environ: later subprocesses would inherit it
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    c = distributed.Client(cluster)
    environ = dict(os.environ)
    yield c
    c.close()
    cluster.close()
    D.restore_environ(environ)  # a nanny restarting the worker killed below wrote OMP/MKL_NUM_THREADS=1 again


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """In-process references: a capture, then metrics on a copy of it."""
    root = tmp_path_factory.mktemp("dist")
    cap = root / "captured.zarr"
    chanaxis.capture(_model(), "synthetic", cap, progress=False, **CAPTURE)
    meas = root / "measured.zarr"
    shutil.copytree(cap, meas)
    chanaxis.metrics(meas, progress=False, **METRICS)
    return {"captured": cap, "measured": meas}


def test_capture_with_two_workers_equals_in_process_bit_for_bit(bases, tmp_path):
    out = tmp_path / "run.zarr"
    chanaxis.capture(_model(), "synthetic", out, progress=False, workers=2, **CAPTURE)
    diff = differences(arrays(bases["captured"], ["samples", "layers"]), arrays(out, ["samples", "layers"]),
                       atol=0)
    assert not diff, diff


def test_metrics_on_a_cluster_equals_in_process(bases, client, tmp_path):
    run = tmp_path / "run.zarr"
    shutil.copytree(bases["captured"], run)
    chanaxis.metrics(run, progress=False, scheduler=client, **METRICS)
    nodes = ["metrics", "structure", "metrics_parts"]
    diff = differences(arrays(bases["measured"], nodes), arrays(run, nodes))
    assert not diff, diff


def test_lesion_on_a_cluster_equals_in_process(bases, client, tmp_path, monkeypatch):
    import io
    import re

    from rich.console import Console

    from chanaxis import progress
    ref, run = tmp_path / "ref.zarr", tmp_path / "run.zarr"
    shutil.copytree(bases["measured"], ref)
    shutil.copytree(bases["measured"], run)
    chanaxis.lesion(ref, progress=False, **LESION)
    monkeypatch.setattr(progress, "console", Console(file=io.StringIO(), force_terminal=True, width=100))
    with progress.record() as finals:  # the bar advances per finished task and ends at its total
        chanaxis.lesion(run, progress=True, scheduler=client, **LESION)
    [bar] = [f for f in finals if f.description == "lesion"]
    assert bar.completed == bar.total > 0
    shown = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", progress.console.file.getvalue())
    assert "cluster 2 workers, dashboard" in shown  # the cluster is announced beside the bar
    diff = differences(arrays(ref, ["lesion"]), arrays(run, ["lesion"]))
    assert not diff, diff
    # the model was built once per worker and run (its context cached), not once per task
    counts = client.run(D.worker_contexts)
    assert all(n <= 1 for n in counts.values()), counts


def _kill_a_worker_mid_unit(client, prefix: str, killed: list, stop: threading.Event):
    """SIGKILL the process of the first worker seen processing a task whose key starts with `prefix`."""
    pids = client.run(os.getpid)
    while not stop.is_set():
        for addr, keys in client.processing().items():
            if any(str(k).startswith(prefix) for k in keys) and addr in pids:
                time.sleep(0.3)  # well inside the unit
                os.kill(pids[addr], signal.SIGKILL)
                killed.append(addr)
                return
        time.sleep(0.05)


def test_prune_on_a_cluster_with_a_worker_killed_mid_unit_equals_in_process(bases, client, tmp_path):
    ref, run = tmp_path / "ref.zarr", tmp_path / "run.zarr"
    shutil.copytree(bases["measured"], ref)
    shutil.copytree(bases["measured"], run)
    chanaxis.prune(ref, progress=False, **PRUNE)
    killed, stop = [], threading.Event()
    killer = threading.Thread(target=_kill_a_worker_mid_unit, args=(client, "prune-", killed, stop), daemon=True)
    killer.start()
    try:
        chanaxis.prune(run, progress=False, scheduler=client, **PRUNE)
    finally:
        stop.set()
        killer.join(5)
    assert killed, "no worker was killed: the test did not exercise a fault"
    diff = differences(arrays(ref, ["pruning"]), arrays(run, ["pruning"]))
    assert not diff, diff
    client.wait_for_workers(2, timeout=60)  # the nanny restarts the killed worker for the next tests


def test_done_units_are_never_submitted(bases, client, tmp_path, monkeypatch):
    run = tmp_path / "run.zarr"
    shutil.copytree(bases["captured"], run)
    stage = S.get("metrics")(**METRICS)
    ctx = S.Context(progress=False)
    stage.prepare(run, ctx)
    first, *rest = stage.units(run)
    stage.run_unit(run, first, ctx)           # one layer done in-process, as a killed driver would leave it
    submitted = []
    real = D.run_units

    def spy(stage, run, ctx, units, *a, **k):
        submitted.extend(u.key for u in units)
        return real(stage, run, ctx, units, *a, **k)
    monkeypatch.setattr(D, "run_units", spy)
    chanaxis.metrics(run, progress=False, scheduler=client, **METRICS)
    assert first.key not in submitted and sorted(submitted) == sorted(u.key for u in rest)
    nodes = ["metrics", "structure", "metrics_parts"]
    diff = differences(arrays(bases["measured"], nodes), arrays(run, nodes))
    assert not diff, diff


def test_without_a_cluster_nothing_changes(monkeypatch, bases, tmp_path):
    monkeypatch.setattr(D, "run_units", lambda *a, **k: pytest.fail("a cluster was used"))
    run = tmp_path / "run.zarr"
    shutil.copytree(bases["captured"], run)
    chanaxis.metrics(run, progress=False, workers=1, **METRICS)
    assert S.Context(workers=1).cluster() is None and S.Context().cluster() is None


def test_driver_killed_mid_stage_then_rerun_resumes_and_equals_uninterrupted(bases, tmp_path):
    """The driver (`chanaxis lesion --workers 2`) SIGKILLed while its cluster runs the units: rerunning the same
    command takes over its lock, submits only the units not done, and ends equal to an uninterrupted run."""
    import subprocess
    import sys
    import zarr
    params = {"fraction": 0.1, "eval_images": 64, "batch_size": 64, "unit_channels": 1, "replace": False}
    ref, run = tmp_path / "ref.zarr", tmp_path / "run.zarr"
    shutil.copytree(bases["measured"], ref)
    shutil.copytree(bases["measured"], run)
    chanaxis.lesion(ref, progress=False, **{**params, "unit_channels": 64})  # results do not depend on it
    cmd = [sys.executable, "-m", "chanaxis.cli.main", "lesion", str(run), "--workers", "2", "--fraction", "0.1",
           "--eval-images", "64", "--batch-size", "64", "--unit-channels", "1", "--no-replace"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    # a session of its own: whatever the killed driver leaves (its cluster's processes) is stopped with it below
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    done_at_kill = None
    try:
        deadline = time.time() + 240
        while time.time() < deadline and driver.poll() is None:
            try:
                lg = zarr.open_group(str(run), mode="r")["lesion"]
                done = np.asarray(lg["block_done"][...], bool)
            except (KeyError, FileNotFoundError, ValueError):
                done = None
            if done is not None and 2 <= done.sum() < len(done) - 2:
                os.kill(driver.pid, signal.SIGKILL)  # the driver only: its workers are orphaned mid-task
                done_at_kill = (int(done.sum()), len(done))
                break
            time.sleep(0.05)
        driver.wait(30)
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)   # the orphaned cluster processes
        except ProcessLookupError:
            pass
    assert done_at_kill is not None, "the driver was not killed mid-stage: the test did not exercise the fault"
    assert chanaxis.store.stage_state(run, "lesion") == "running"
    left = S.get("lesion")(**params).units(run)
    assert 0 < len(left) <= done_at_kill[1] - done_at_kill[0]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert chanaxis.store.stage_state(run, "lesion") == "done"
    diff = differences(arrays(ref, ["lesion"]), arrays(run, ["lesion"]))
    assert not diff, diff


def test_a_local_cluster_leaves_this_process_environment_alone():
    """dask's nanny writes OMP_NUM_THREADS=1 (and the like) into os.environ for its workers; a cluster made for a
    run must not leave them, or every later subprocess (a training run, a tool) runs single-threaded."""
    before = dict(os.environ)
    cluster = D.Cluster(workers=1)
    try:
        assert dict(os.environ) == before
    finally:
        cluster.close()
    assert dict(os.environ) == before
