"""Duration estimates (`chanaxis.estimate`, `Study.estimate`): real images through the real loader, the overlap
model, the dominant term of each stage and of the study, the model left untouched, no extra model build."""
import io
import time

import numpy as np
import pytest
import torch
from rich.console import Console

from chanaxis import estimate as E
from chanaxis.data import load_dataset
from chanaxis.data.datasets import SyntheticDataset
from chanaxis.data.loader import Loader
from chanaxis.study import Study

SLEEP = 0.03  # seconds per item of the slow dataset: far above test_resnet's forward of a 32 px image
CAPTURE_ONLY = {"capture": {"n_calibration": 64, "chunk_images": 16}}


def _study(tmp_path, **kw):
    return Study("test_resnet", "synthetic", tmp_path / "s", progress=False, loader_workers=0,
                 overrides=kw.pop("overrides", CAPTURE_ONLY),
                 console=Console(file=io.StringIO(), width=200), **kw)


@pytest.fixture
def slow_items(monkeypatch):
    """Every synthetic item (in whichever process reads it) takes SLEEP seconds more."""
    orig = SyntheticDataset.__getitem__

    def slow(self, i):
        time.sleep(SLEEP)
        return orig(self, i)
    monkeypatch.setattr(SyntheticDataset, "__getitem__", slow)


@pytest.fixture
def fast_items(monkeypatch):
    """Synthetic items served from memory: a handful of decoded images, copied per item (no generation)."""
    cache = {}
    orig = SyntheticDataset.__getitem__

    def fast(self, i):
        key = (id(self), i % 8)
        if key not in cache:
            cache[key] = orig(self, i % 8)
        x, _ = cache[key]
        return x.clone(), int(self.labels[i])
    monkeypatch.setattr(SyntheticDataset, "__getitem__", fast)


# ------------------------------------------------------------------------------------------------ the overlap model
def test_stream_overlaps_or_adds():
    assert E.stream(10, 0.5, 0.2, E.FORWARD, overlap=True) == {E.LOADER: 5.0}
    assert E.stream(10, 0.1, 0.2, E.FORWARD, overlap=True) == {E.FORWARD: 2.0}
    both = E.stream(10, 0.1, 0.2, E.FORWARD, overlap=False)
    assert both == pytest.approx({E.LOADER: 1.0, E.FORWARD: 2.0})
    assert not E.overlaps(0, "cuda")  # the loader in the calling thread never overlaps
    assert E.overlaps(4, "cuda")      # workers on the host, compute on the GPU


def test_row_bound_and_study_shares():
    est = E.Estimate([E.Row("a", "", {E.LOADER: 3.0, E.FORWARD: 1.0}), E.Row("b", "", {E.FORWARD: 4.0})], None)
    assert est.rows[0].bound == E.LOADER and est.rows[1].bound == E.FORWARD
    assert est.total == 8.0
    assert est.dominant() == (E.FORWARD, pytest.approx(62.5))
    assert sum(est.shares().values()) == pytest.approx(100.0)


# ------------------------------------------------------------------------------------------------ the measurement
def test_slow_decode_makes_the_loader_dominate(tmp_path, slow_items):
    study = _study(tmp_path)
    est = E.estimate_stages(study, ["capture"])
    (row,) = est.rows
    assert row.bound == E.LOADER
    assert est.rates.load_eval >= SLEEP  # measured through the loader, not guessed
    assert row.seconds >= 64 * SLEEP  # 64 calibration images, each at least SLEEP to read
    assert est.dominant()[0] == E.LOADER and est.dominant()[1] > 50


def test_fast_data_makes_the_forward_dominate(tmp_path, fast_items):
    est = E.estimate_stages(_study(tmp_path), ["capture"])
    (row,) = est.rows
    assert row.bound == E.FORWARD, row.terms
    assert est.rates.load_eval < est.rates.forward


def test_the_estimate_reads_real_images_through_the_loader(tmp_path, monkeypatch):
    calls = []
    orig = Loader.batches

    def spy(self, indices, batch_size, *, seeds=None, drop_last=False):
        calls.append((self.dataset, np.asarray(indices).copy(), seeds is not None, self.workers))
        return orig(self, indices, batch_size, seeds=seeds, drop_last=drop_last)
    monkeypatch.setattr(Loader, "batches", spy)
    study = _study(tmp_path, overrides={**CAPTURE_ONLY, "train": {"batch_size": 8}})
    model = study.load_model()
    seen = []
    model.module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    monkeypatch.setattr(Study, "load_model", lambda self, *a, **k: model)
    E.estimate_stages(study, ["train", "capture"])
    assert calls
    n_train = len(load_dataset("synthetic", split="train").dataset)
    for ds, idx, _, workers in calls:
        assert isinstance(ds, SyntheticDataset) and len(ds) == n_train  # the study's dataset, its train split
        assert workers == 0  # the study's worker count
        assert len(idx) and idx.min() >= 0 and idx.max() < n_train and len(set(idx)) == len(idx)
    assert any(aug for _, _, aug, _ in calls)  # the training step's batch: augmented, seeded per item
    # the forward ran on exactly the images the loader read: the first (warm-up) forward on the first items read
    ds, idx, _, _ = calls[0]
    want = torch.stack([ds[int(i)][0] for i in idx[:E.PROBE]])
    assert torch.equal(seen[0], want)


def test_training_step_leaves_the_model_bit_identical(tiny_resnet):
    module = tiny_resnet.module
    module.eval()
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    ptrs = {k: v.data_ptr() for k, v in module.state_dict().items()}
    ev = load_dataset("synthetic", split="train", transform="eval").dataset
    tr = load_dataset("synthetic", split="train", transform="train").dataset
    rng = torch.random.get_rng_state()
    r = E.measure(tiny_resnet, ev, tr, workers=0, eval_batch=8, train_batch=8, budget_s=0.05)
    assert r.step is not None and r.step > 0 and r.forward > 0 and r.load_train > 0 and r.matmul > 0
    after = module.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), k  # weights and BN statistics
        assert after[k].data_ptr() == ptrs[k], k  # restored in place: the same tensors
    assert all(p.grad is None for p in module.parameters())
    assert not module.training
    assert torch.equal(torch.random.get_rng_state(), rng)


# ------------------------------------------------------------------------------------------------ the study
def test_study_prints_what_bounds_each_stage_and_the_study(tmp_path, slow_items):
    study = _study(tmp_path)
    study.estimate(["capture"])
    out = study.console.file.getvalue()
    capture_line = next(line for line in out.splitlines() if "capture" in line)
    assert E.LOADER in capture_line and "%" in capture_line and " s " in capture_line
    out = " ".join(out.split())  # the title may wrap
    assert "bound by" in out and "real images of synthetic" in out
    assert "images/s" in out and "GFLOP/s" in out
    assert f"dominant term: {E.LOADER}," in out and "% of the estimated" in out


def test_no_extra_model_build(tmp_path, monkeypatch, tiny_resnet):
    builds = []
    monkeypatch.setattr(Study, "load_model", lambda self, *a, **k: builds.append(a) or tiny_resnet)
    untrained = _study(tmp_path / "a")
    E.estimate_stages(untrained, ["capture"])
    assert len(builds) == 1  # nothing trained yet: one build
    ckpt = tmp_path / "w.pt"
    torch.save(tiny_resnet.module.state_dict(), ckpt)
    builds.clear()
    trained = _study(tmp_path / "b", checkpoint=ckpt)
    E.estimate_stages(trained, ["capture"])
    assert trained.ctx.model(trained.run) is tiny_resnet
    assert len(builds) == 1  # the study's own build, reused by the stages after the estimate


def test_nothing_but_the_report_measures_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(E, "measure", lambda *a, **k: pytest.fail("measured for the report alone"))
    est = E.estimate_stages(_study(tmp_path), ["report"])
    assert [r.stage for r in est.rows] == ["report"] and est.rates is None
