"""Run stores at URLs: a real S3-compatible server (moto's standalone server, over HTTP, started here) reached
through s3fs exactly as a user's bucket would be (`AWS_ENDPOINT_URL`).

On a tiny model: capture and metrics into `s3://…` equal the same run on disk (bit for bit / 1e-10); status,
resume after an interrupted capture and the lazy `open_run` work there; a cluster's workers write their units
there; `--overwrite` deletes only a store chanaxis made and holding only its own keys (never a bucket's root);
the writer lock is an object beside the store; a training run, its checkpoints and the report's figures live
there too.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from storecmp import arrays, differences

import chanaxis
from chanaxis import stage as S
from chanaxis.errors import ChanaxisError
from chanaxis.stages.capture import CaptureStage

BUCKET = "chanaxis-test"
MODEL = {"num_classes": 10, "image_size": 32, "init_seed": 0}
CAPTURE = {"n_calibration": 32, "chunk_images": 16}
METRICS = {"only": "local,target", "n_null": 1, "n_perm": 10}


def _model():
    return chanaxis.load_model("test_resnet", **MODEL)


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free local port, the AWS variables pointing at it, one empty bucket; `fs` for checks."""
    from moto.server import ThreadedMotoServer
    import s3fs
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    try:
        yield fs
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The same capture + metrics on disk: the reference."""
    run = tmp_path_factory.mktemp("s3ref") / "run.zarr"
    chanaxis.capture(_model(), "synthetic", run, progress=False, **CAPTURE)
    chanaxis.metrics(run, progress=False, **METRICS)
    return run


def _url(name: str) -> str:
    return f"s3://{BUCKET}/{name}"


@pytest.fixture(scope="module")
def on_s3(s3):
    """The same capture + metrics into the bucket."""
    url = _url("study/run.zarr")
    chanaxis.capture(_model(), "synthetic", url, progress=False, **CAPTURE)
    chanaxis.metrics(url, progress=False, **METRICS)
    return url


def test_capture_and_metrics_on_s3_equal_the_run_on_disk(s3, local, on_s3):
    url = on_s3
    assert s3.exists(f"{BUCKET}/study/run.zarr/zarr.json")
    ref, got = arrays(local), arrays(url)
    assert differences(ref, got, atol=0) == [] and len(got) > 50
    assert chanaxis.store.status(url) == {"capture": "done", "metrics": "done"}
    # resume: a finished stage lists no unit, and rerunning it is accepted (same config) and changes nothing
    assert CaptureStage(**CAPTURE).units(url) == [] and CaptureStage(**CAPTURE).done(url)
    chanaxis.capture(_model(), "synthetic", url, progress=False, **CAPTURE)
    # the lazy tree: dask arrays until computed; values as on disk
    tree = chanaxis.open_run(url)
    v = tree["metrics"]["input_capture"]
    assert v.chunks is not None
    np.testing.assert_array_equal(v.values, chanaxis.open_run(local)["metrics"]["input_capture"].values)
    # no lock object is left behind
    assert not s3.exists(f"{BUCKET}/study/.run.zarr.chanaxis-lock")


def test_store_on_s3_opens_with_plain_xarray_from_consolidated_metadata(s3, on_s3):
    """The consolidated metadata is written on S3 too: plain xarray opens the tree and each node without a
    warning, and every variable has long_name and units."""
    import warnings
    import xarray as xr
    from chanaxis import conventions
    meta = json.loads(s3.cat(f"{BUCKET}/study/run.zarr/zarr.json"))
    assert {"metrics", "samples", "graph"} <= set(meta["consolidated_metadata"]["metadata"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tree = xr.open_datatree(on_s3, engine="zarr")
        for node in ("metrics", "samples", "graph"):
            ds = xr.open_zarr(on_s3, group=node)
            assert not conventions.missing(node, ds) and set(ds.variables) == set(tree[node].variables)


def test_interrupted_capture_on_s3_resumes_only_what_is_missing(s3, local):
    url = _url("resume/run.zarr")
    class StopsAtSecondChunk(CaptureStage):
        def run_unit(self, run, unit, ctx):
            if unit.data == 1:
                raise KeyboardInterrupt  # the process is stopped after its first chunk
            super().run_unit(run, unit, ctx)

    stage = StopsAtSecondChunk(**CAPTURE)
    ctx = S.Context(progress=False, model=_model(), dataset="synthetic")
    with pytest.raises(KeyboardInterrupt):
        S.run_stage(stage, url, ctx)
    stage.flush(url, ctx)  # the first chunk's writes, queued by the writer thread when the stop came, are done
    assert chanaxis.store.stage_state(url, "capture") == "running"
    left = stage.units(url)
    assert len(left) == 1 and left[0].key == "chunk/1"
    chanaxis.capture(_model(), "synthetic", url, progress=False, **CAPTURE)
    assert differences(arrays(local, ["samples", "layers"]), arrays(url, ["samples", "layers"]), atol=0) == []


def test_cluster_workers_write_their_units_to_s3(s3, local):
    url = _url("cluster/run.zarr")
    chanaxis.capture(_model(), "synthetic", url, progress=False, workers=2, **CAPTURE)
    assert differences(arrays(local, ["samples", "layers"]), arrays(url, ["samples", "layers"]), atol=0) == []


def test_overwrite_on_s3_deletes_only_a_store_chanaxis_made(s3):
    url = _url("owned/run.zarr")
    chanaxis.capture(_model(), "synthetic", url, progress=False, **CAPTURE)
    # a file someone put inside the store: the store is not deleted, and the message names the file
    s3.pipe(f"{BUCKET}/owned/run.zarr/notes.txt", b"mine")
    with pytest.raises(ChanaxisError, match="notes.txt"):
        chanaxis.capture(_model(), "synthetic", url, progress=False, overwrite=True, seed=1, **CAPTURE)
    assert s3.exists(f"{BUCKET}/owned/run.zarr/notes.txt") and s3.exists(f"{BUCKET}/owned/run.zarr/zarr.json")
    # without it, --overwrite replaces the store (another seed: another run)
    s3.rm(f"{BUCKET}/owned/run.zarr/notes.txt")
    chanaxis.capture(_model(), "synthetic", url, progress=False, overwrite=True, seed=1, **CAPTURE)
    assert chanaxis.store.run_config(url)["seed"] == 1
    # a prefix holding objects chanaxis did not write is never a store, and a bucket's root is never replaced
    s3.pipe(f"{BUCKET}/theirs/data.csv", b"1,2")
    with pytest.raises(ChanaxisError, match="not a chanaxis run store"):
        chanaxis.capture(_model(), "synthetic", _url("theirs"), progress=False, overwrite=True, **CAPTURE)
    assert s3.cat(f"{BUCKET}/theirs/data.csv") == b"1,2"
    with pytest.raises(ChanaxisError, match="root of a bucket"):
        chanaxis.capture(_model(), "synthetic", f"s3://{BUCKET}", progress=False, overwrite=True, **CAPTURE)


def test_a_writer_lock_on_s3_refuses_a_second_writer(s3):
    url = _url("locked/run.zarr")
    chanaxis.capture(_model(), "synthetic", url, progress=False, **CAPTURE)
    lock = f"{BUCKET}/locked/.run.zarr.chanaxis-lock"
    s3.pipe(lock, json.dumps({"pid": 1, "host": "another-machine", "since": "2026-11-29 10:00:00"}).encode())
    with pytest.raises(ChanaxisError, match="another-machine"):
        chanaxis.capture(_model(), "synthetic", url, progress=False, **CAPTURE)
    assert s3.exists(lock)  # another writer's lock is never removed
    s3.rm(lock)
    chanaxis.capture(_model(), "synthetic", url, progress=False, **CAPTURE)
    assert not s3.exists(lock)


def test_training_checkpoints_and_report_live_on_s3(s3, on_s3):
    url = _url("trained")
    manifest = chanaxis.train("test_resnet", "synthetic", url, epochs=1, train_subset=64, batch_size=32,
                              max_batches_per_epoch=1, eval_subset=32, progress=False)
    assert manifest["status"] == "done" and s3.exists(f"{BUCKET}/trained/manifest.json")
    from chanaxis.checkpoints import read_state_dict
    from chanaxis.stages.trajectory import find_checkpoints
    _, ckpts = find_checkpoints(url)
    assert [c.epoch for c in ckpts] == [0, 1]
    sd = read_state_dict(ckpts[-1].path)
    model = chanaxis.load_model("test_resnet", checkpoint=str(ckpts[-1].path), **MODEL)
    own = model.module.state_dict()
    assert all(np.array_equal(own[k].numpy(), v.numpy()) for k, v in sd.items())
    # a rerun of the finished run resumes it: nothing trains again
    again = chanaxis.train("test_resnet", "synthetic", url, epochs=1, train_subset=64, batch_size=32,
                           max_batches_per_epoch=1, eval_subset=32, progress=False)
    assert again["history"] == manifest["history"]
    # the report of a store at a URL writes its JSON summary and figures beside it
    from chanaxis.report import report
    report(on_s3)
    assert s3.exists(f"{BUCKET}/study/run_summary.json")
    figs = s3.ls(f"{BUCKET}/study/run_figures")
    assert figs and all(s3.cat(f)[:8] == b"\x89PNG\r\n\x1a\n" for f in figs)
