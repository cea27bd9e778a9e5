"""Capture into the run store: contents, the margin T, resume after SIGKILL, refusal of another config."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import zarr

import chanaxis
from chanaxis.stages.capture import logit_margin
from chanaxis.data import calibration_indices, load_dataset
from chanaxis.errors import ChanaxisError


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_resnet):
    out = tmp_path_factory.mktemp("cap") / "run.zarr"
    chanaxis.capture(tiny_resnet, "synthetic", out, n_calibration=100, chunk_images=32, progress=False)
    return out


def test_store_layout_and_shapes(run, tiny_resnet):
    tree = chanaxis.open_run(run)
    assert tree.attrs["status"]["capture"] == "done"
    assert set(tree.children) >= {"samples", "layers", "graph"}
    s = tree["samples"].to_dataset()
    assert s.sizes["image"] == 100 and s["logits"].shape == (100, 10)
    idx = calibration_indices(2000, 100, 0)
    assert np.array_equal(s["dataset_index"].values, idx)
    g = tiny_resnet.graph
    assert sorted(tree["layers"].children) == sorted(g.names)
    for layer in g.layers:
        ds = tree[f"layers/{layer.name}"].to_dataset()
        hw = layer.out_hw[0] * layer.out_hw[1]
        spi = min(16, hw)
        assert ds["local"].shape == (100 * spi, layer.c_out)
        assert ds["gap"].shape == (100, layer.c_out)
        counts = np.bincount(ds["image_of_sample"].values, minlength=100)
        assert (counts == spi).all()
        assert ds["position"].values.max() < hw
        assert ds["local"].chunks[0][0] == 32 * spi  # chunked along samples, one chunk per batch
    gr = tree["graph"].to_dataset()
    assert int(gr["macs"].sum()) + sum(gr.attrs["other_macs"].values()) == g.total_macs


def test_samples_equal_a_direct_forward(run, tiny_resnet):
    """Stored local samples are the pre-norm outputs at the stored positions; T is the margin by hand."""
    tree = chanaxis.open_run(run)
    s = tree["samples"].to_dataset()
    handle = load_dataset("synthetic")
    pick = [0, 37, 99]
    x = torch.stack([handle.dataset[int(s["dataset_index"][i])][0] for i in pick])
    labels = [int(handle.dataset[int(s["dataset_index"][i])][1]) for i in pick]
    assert list(s["label"].values[pick]) == labels
    names = [tiny_resnet.graph.layers[k].name for k in (0, 5, -1)]
    logits, caps = tiny_resnet.run(x, capture=names)
    for r, i in enumerate(pick):
        z = logits[r].numpy()
        want = z[labels[r]] - np.max(np.delete(z, labels[r]))
        assert s["margin"].values[i] == pytest.approx(want, abs=1e-4)
        assert bool(s["correct"].values[i]) == (z.argmax() == labels[r])
    for name in names:
        ds = tree[f"layers/{name}"].to_dataset()
        full = caps[name].reshape(3, caps[name].shape[1], -1).numpy()
        for r, i in enumerate(pick):
            sel = ds["image_of_sample"].values == i
            pos = ds["position"].values[sel]
            np.testing.assert_allclose(ds["local"].values[sel], full[r][:, pos].T, atol=1e-5)
            np.testing.assert_allclose(ds["gap"].values[i], full[r].mean(1), atol=1e-5)


def test_logit_margin():
    z = torch.tensor([[1.0, 3.0, 2.0], [5.0, -1.0, 0.0]])
    assert logit_margin(z, torch.tensor([1, 2])).tolist() == [1.0, -5.0]


def test_float16_store(tmp_path, tiny_resnet):
    out = chanaxis.capture(tiny_resnet, "synthetic", tmp_path / "h.zarr", n_calibration=20, dtype="float16",
                           progress=False)
    ds = chanaxis.open_run(out)["layers/layer1.0.conv1"].to_dataset()
    assert ds["local"].dtype == np.float16 and ds["gap"].dtype == np.float32


def test_other_config_is_refused(run, tiny_resnet):
    before = zarr.open_group(str(run)).attrs["config"]
    with pytest.raises(ChanaxisError, match="another config"):
        chanaxis.capture(tiny_resnet, "synthetic", run, n_calibration=50, progress=False)
    assert zarr.open_group(str(run)).attrs["config"] == before  # nothing lost


def test_unwritable_output(tmp_path, tiny_resnet):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.access(ro, os.W_OK):  # running as root: permissions do not bind, use a path under a file instead
        target = tmp_path / "file"
        target.write_text("x")
        bad = target / "run.zarr"
    else:
        bad = ro / "run.zarr"
    with pytest.raises(ChanaxisError, match="cannot write|not writable"):
        chanaxis.capture(tiny_resnet, "synthetic", bad, n_calibration=10, progress=False)


def _cli(*args):
    return [sys.executable, "-m", "chanaxis.cli.main", *args]


def test_resume_after_sigkill_gives_identical_arrays(tmp_path):
    args = ["capture", "test_resnet", "--dataset", "synthetic", "--n-calibration", "400", "--batch-size", "16",
            "--quiet"]
    ref = tmp_path / "ref.zarr"
    subprocess.run(_cli(*args, "--out", str(ref)), check=True, capture_output=True)
    out = tmp_path / "killed.zarr"
    proc = subprocess.Popen(_cli(*args, "--out", str(out)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_dir = out / "samples" / "chunk_done" / "c"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if done_dir.exists() and len(list(done_dir.iterdir())) >= 5:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "capture finished before it could be killed; make the run longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert zarr.open_group(str(out)).attrs["status"]["capture"] == "running"
    n_done = int(np.asarray(zarr.open_group(str(out))["samples/chunk_done"][:]).sum())
    assert 0 < n_done < 25
    subprocess.run(_cli(*args, "--out", str(out)), check=True, capture_output=True)
    a, b = chanaxis.open_run(ref), chanaxis.open_run(out)
    assert b.attrs["status"]["capture"] == "done"
    for name in a["layers"].children:
        for var in ("local", "gap", "position"):
            np.testing.assert_array_equal(a[f"layers/{name}/{var}"].values, b[f"layers/{name}/{var}"].values)
    for var in ("margin", "logits", "label"):
        np.testing.assert_array_equal(a[f"samples/{var}"].values, b[f"samples/{var}"].values)


def test_cli_errors_are_one_line(tmp_path):
    for args, needle in [
        (["capture", "resnt18", "-d", "synthetic", "-o", str(tmp_path / "a.zarr")], "did you mean"),
        (["capture", "test_resnet", "-d", "cifar10", "-o", str(tmp_path / "b.zarr"), "--data-root",
          str(tmp_path / "nowhere")], "nowhere"),
        (["capture", "test_resnet", "-d", "synthetic", "-o", str(tmp_path / "c.zarr"), "--checkpoint",
          str(tmp_path / "missing.pt")], "does not exist"),
    ]:
        r = subprocess.run(_cli(*args), capture_output=True, text=True)
        assert r.returncode == 2
        assert "Traceback" not in r.stderr and needle in r.stderr
        assert len([l for l in r.stderr.splitlines() if l.strip()]) == 1, r.stderr


def test_reducer_reads_nchw_and_channels_last_alike():
    """The hook's reduction takes C-vectors and per-image means from the output in its own memory layout (ConvNeXt's
    MLP hands it a channels-last tensor): both layouts give the values of the plain NCHW computation."""
    from chanaxis.sampling import reducer
    g = torch.Generator().manual_seed(0)
    t = torch.randn(3, 5, 4, 6, generator=g)
    pos = torch.randint(0, 24, (3, 7), generator=g)
    flat = t.reshape(3, 5, 24)
    want_local = torch.stack([flat[i, :, pos[i]].T for i in range(3)]).reshape(-1, 5)
    want_gap = flat.mean(2)
    nhwc_view = t.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)   # what the hook sees for an NHWC layer
    assert not nhwc_view.is_contiguous()
    for view in (t, nhwc_view, t.contiguous(memory_format=torch.channels_last)):
        local, gap = reducer(pos)(view)
        torch.testing.assert_close(local, want_local)
        torch.testing.assert_close(gap, want_gap)
        view.zero_()  # an in-place op after the hook must not reach what it returned
        assert local.abs().sum() > 0


def test_capture_killed_while_making_its_arrays_remakes_them(tmp_path, tiny_resnet, monkeypatch):
    """A capture stopped while its store's arrays are being made (some made, status not yet "running") makes them
    again on the rerun and finishes with the arrays of an uninterrupted capture."""
    from chanaxis import store as store_mod
    ref = chanaxis.capture(tiny_resnet, "synthetic", tmp_path / "ref.zarr", n_calibration=40, chunk_images=16,
                           progress=False)
    real = store_mod.new_arrays

    def half(group, groups=None, arrays=None):
        real(group, groups=groups, arrays=(arrays or [])[: len(arrays or []) // 2])
        raise KeyboardInterrupt  # stands in for the kill
    monkeypatch.setattr(store_mod, "new_arrays", half)
    out = tmp_path / "run.zarr"
    with pytest.raises(KeyboardInterrupt):
        chanaxis.capture(tiny_resnet, "synthetic", out, n_calibration=40, chunk_images=16, progress=False)
    assert "capture" not in zarr.open_group(str(out)).attrs["status"]
    monkeypatch.setattr(store_mod, "new_arrays", real)
    chanaxis.capture(tiny_resnet, "synthetic", out, n_calibration=40, chunk_images=16, progress=False)
    a, b = chanaxis.open_run(ref), chanaxis.open_run(out)
    assert b.attrs["status"]["capture"] == "done"
    for layer in tiny_resnet.graph.names:
        for var in ("local", "gap", "position", "weight"):
            np.testing.assert_array_equal(a[f"layers/{layer}"][var].values, b[f"layers/{layer}"][var].values)
    np.testing.assert_array_equal(a["samples"]["margin"].values, b["samples"]["margin"].values)
