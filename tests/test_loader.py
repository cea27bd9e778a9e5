"""The one batching path (chanaxis.data.loader): order and augmentation independent of the number of workers,
restartable streams, torchvision's decoder equal to PIL's, the device-decode path, and capture/training results
that do not depend on --loader-workers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from storecmp import arrays, differences

from chanaxis import data
from chanaxis.data.datasets import decode, read_bytes
from chanaxis.data.loader import Loader, check_workers, default_workers, item_seeds
from chanaxis.errors import ChanaxisError


def _photo(rng, h=60, w=80) -> np.ndarray:
    base = rng.uniform(0, 255, (h // 10 + 1, w // 10 + 1, 3))
    img = np.kron(base, np.ones((10, 10, 1)))[:h, :w] + rng.normal(0, 20, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An ImageFolder of JPEGs (and one PNG, one BMP) in three classes."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (root / c).mkdir()
        for j in range(7):
            Image.fromarray(_photo(rng)).save(root / c / f"{j}.jpg", quality=90)
    Image.fromarray(_photo(rng)).save(root / "a" / "p.png")
    Image.fromarray(_photo(rng)).save(root / "b" / "q.bmp")
    return root


def _all(loader, idx, bs, seeds=None):
    xs, ys = zip(*loader.batches(idx, bs, seeds=seeds))
    return torch.cat(xs), torch.cat(ys), [len(y) for y in ys]


def test_same_images_in_the_same_order_whatever_the_workers(folder):
    h = data.load_dataset(str(folder), image_size=32)
    idx = np.random.default_rng(1).permutation(len(h.dataset))
    ref = torch.stack([h.dataset[int(i)][0] for i in idx]), torch.as_tensor(h.targets[idx])
    for w in (0, 1, 2):
        x, y, sizes = _all(Loader(h.dataset, workers=w), idx, 5)
        assert sizes == [5, 5, 5, 5, 3]
        assert torch.equal(x, ref[0]) and torch.equal(y, ref[1]), w


def test_augmentation_is_seeded_per_item_not_per_worker(folder):
    h = data.load_dataset(str(folder), image_size=32, transform="train")
    idx = np.arange(len(h.dataset))
    seeds = item_seeds(0, 1, len(idx))
    runs = [_all(Loader(h.dataset, workers=w), idx, 4, seeds)[0] for w in (0, 2, 1)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    other = _all(Loader(h.dataset, workers=2), idx, 4, item_seeds(0, 2, len(idx)))[0]
    assert not torch.equal(runs[0], other)  # another epoch draws other crops and flips
    # the calling process's generator is left where it was
    torch.manual_seed(5)
    a = torch.rand(1)
    torch.manual_seed(5)
    _all(Loader(h.dataset, workers=0), idx, 4, seeds)
    assert torch.equal(torch.rand(1), a)


def test_a_stream_abandoned_midway_restarts_cleanly(folder):
    h = data.load_dataset(str(folder), image_size=32)
    ld = Loader(h.dataset, workers=2, prefetch=2)
    first = ld.batches(np.arange(20), 2)
    next(first)  # the workers are ahead by several batches when this stream is dropped
    x, y, _ = _all(ld, np.arange(20, 8, -1), 3)
    assert torch.equal(y, torch.as_tensor(h.targets[np.arange(20, 8, -1)]))
    assert torch.equal(x[0], h.dataset[20][0])
    ld.close()
    with pytest.raises(ChanaxisError, match="closed"):
        next(ld.batches([0], 1))


def test_torchvision_decoder_gives_pils_pixels(folder):
    for f in sorted(folder.rglob("*.*")):
        with Image.open(f) as im:
            pil = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
        ours = decode(read_bytes(str(f)), str(f))
        assert ours.dtype == torch.uint8 and ours.shape == pil.shape
        assert torch.equal(ours, pil), f.name  # libjpeg-turbo both: the same IDCT, the same chroma upsampling


def test_decode_in_the_main_process_equals_decode_in_the_workers(folder):
    """The CUDA path (workers read bytes, the batch is decoded where the model runs), exercised on the CPU."""
    h = data.load_dataset(str(folder), image_size=32)
    jpgs = [i for i, f in enumerate(h.dataset.files) if f.endswith(".jpg")]
    x0, y0, _ = _all(Loader(h.dataset, workers=2), jpgs, 4)
    x1, y1, _ = _all(Loader(h.dataset, workers=2, decode_on_device=True), jpgs, 4)
    assert torch.equal(y0, y1)
    assert (x0 - x1).abs().max() < 1e-6


def test_worker_counts_are_checked(monkeypatch):
    with pytest.raises(ChanaxisError, match="--loader-workers"):
        check_workers(-1)
    monkeypatch.setenv("CHANAXIS_LOADER_WORKERS", "3")
    assert default_workers() == 3 == check_workers(None)
    monkeypatch.setenv("CHANAXIS_LOADER_WORKERS", "many")
    with pytest.raises(ChanaxisError, match="CHANAXIS_LOADER_WORKERS"):
        default_workers()


def test_cli_rejects_a_bad_worker_count_in_one_line(tmp_path, capsys):
    from chanaxis.cli.main import main
    assert main(["capture", "test_resnet", "--dataset", "synthetic", "--out", str(tmp_path / "r.zarr"),
                 "--loader-workers", "-2"]) == 2
    err = capsys.readouterr().err
    assert "--loader-workers must be 0" in err and "Traceback" not in err
    assert not (tmp_path / "r.zarr").exists()


def test_capture_is_bit_identical_with_0_and_2_loader_workers(tmp_path):
    import chanaxis
    stores = []
    for w in (0, 2):
        model = chanaxis.load_model("test_resnet", num_classes=10, image_size=32)
        out = tmp_path / f"w{w}.zarr"
        chanaxis.capture(model, "synthetic", out, n_calibration=70, chunk_images=16, progress=False,
                         loader_workers=w)
        stores.append(arrays(out))
    assert stores[0].keys() == stores[1].keys() and len(stores[0]) > 20
    diff = differences(stores[0], stores[1], atol=0)
    assert not diff, diff


def test_training_does_not_depend_on_the_loader_workers(tmp_path):
    import json

    import chanaxis
    hist = []
    for w in (0, 2):
        chanaxis.train("test_resnet", "synthetic", tmp_path / f"t{w}", epochs=2, max_batches_per_epoch=3,
                       batch_size=16, eval_subset=40, progress=False, loader_workers=w)
        m = json.loads((tmp_path / f"t{w}" / "manifest.json").read_text())
        hist.append([(h["train_loss"], h["eval_loss"], h["eval_acc"]) for h in m["history"]])
        assert m["precision"] == "fp32"
    assert hist[0] == hist[1]
