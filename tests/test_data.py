"""chanaxis.data: every card format read from data written in its real on-disk layout."""

import gzip
import hashlib
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from chanaxis import data
from chanaxis.errors import ChanaxisError

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(),
                                  reason="apt-get install dataset-fashion-mnist")


@pytest.fixture(autouse=True)
def _no_user_data(tmp_path_factory, monkeypatch):
    """Searches must not see the real ~/.cache/chanaxis or $CHANAXIS_DATA of the machine running the tests."""
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    monkeypatch.delenv("CHANAXIS_DATA", raising=False)


def _pickle(path: Path, obj: dict) -> None:
    # the originals are Python 2 pickles with byte-string keys, read back with encoding="latin1"
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _cifar_images(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n).tolist()


def write_cifar10(root: Path, per_batch: int = 4) -> Path:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for k in range(1, 6):
        x, y = _cifar_images(per_batch, k)
        _pickle(d / f"data_batch_{k}", {b"batch_label": b"training batch", b"labels": y, b"data": x,
                                         b"filenames": [b"f.png"] * per_batch})
    x, y = _cifar_images(6, 99)
    _pickle(d / "test_batch", {b"batch_label": b"testing batch", b"labels": y, b"data": x})
    _pickle(d / "batches.meta", {b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog",
                                                  b"frog", b"horse", b"ship", b"truck"], b"num_vis": 3072})
    return d


def write_cifar100(root: Path) -> Path:
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 7), ("test", 3)):
        _pickle(d / split, {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                            b"fine_labels": [97, 3, 50, 0, 99, 12, 7][:n], b"coarse_labels": [1] * n})
    _pickle(d / "meta", {b"fine_label_names": [f"name{k}".encode() for k in range(100)],
                         b"coarse_label_names": [b"c"] * 20})
    return d


def _jpeg(path: Path, color, size=(64, 64)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), color, dtype=np.uint8)).save(path, "JPEG", quality=95)


COLORS = [(220, 20, 20), (20, 220, 20), (20, 20, 220)]


def write_tiny(root: Path) -> tuple[Path, list[str]]:
    d = root / "tiny-imagenet-200"
    wnids = ["n09999999", "n01443537", "n02124075"]  # unsorted on purpose: classes are the sorted wnids
    (d).mkdir(parents=True)
    (d / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        c = COLORS[sorted(wnids).index(w)]
        for k in range(2):
            _jpeg(d / "train" / w / "images" / f"{w}_{k}.JPEG", c)
        (d / "train" / w / f"{w}_boxes.txt").write_text("")
    lines = []
    for k, w in enumerate(["n02124075", "n09999999", "n01443537", "n02124075"]):
        _jpeg(d / "val" / "images" / f"val_{k}.JPEG", COLORS[sorted(wnids).index(w)])
        lines.append(f"val_{k}.JPEG\t{w}\t0\t0\t63\t63")
    (d / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return d, sorted(wnids)


def _mean_rgb(x: torch.Tensor, card) -> np.ndarray:
    """Undo the normalisation and return the mean colour in 0..255."""
    m, s = torch.tensor(card.mean).view(3, 1, 1), torch.tensor(card.std).view(3, 1, 1)
    return ((x * s + m) * 255).mean(dim=(1, 2)).numpy()


# ---------------------------------------------------------------------------------------------------------- cards

def test_cards_have_the_declared_fields():
    cards = {c.name: c for c in data.list_cards()}
    assert set(cards) == {"cifar10", "cifar100", "tiny-imagenet", "imagenet100", "fashion-mnist", "digits",
                          "synthetic"}
    for c in cards.values():
        assert len(c.mean) == 3 and len(c.std) == 3 and all(s > 0 for s in c.std)
        assert c.splits[0] == "train" and len(c.splits) == 2
        assert c.how_to_get and "\n" not in c.how_to_get
        for key in ("optimizer", "lr", "schedule", "epochs", "weight_decay", "batch_size", "pretrained_lr_scale",
                    "augmentation"):
            assert key in c.recipe, (c.name, key)
        assert c.recipe["pretrained_lr_scale"] == 0.1
    assert cards["cifar10"].classes[3] == "cat" and cards["cifar100"].classes is None
    assert cards["cifar100"].recipe_for("resnet18")["lr"] == 0.1
    assert cards["cifar100"].recipe_for("vgg16_bn")["lr"] == 0.05
    assert cards["cifar100"].recipe_for("mobilenetv2_100")["lr"] == 0.01
    assert cards["cifar10"].recipe_for("resnet18")["lr"] == 0.05
    assert cards["cifar10"].recipe_for("mobilenetv2_100")["lr"] == 0.01
    assert cards["cifar100"].augment["rotation"] == 15 and cards["cifar10"].augment["rotation"] == 0
    assert cards["tiny-imagenet"].augment["crop_padding"] == 8
    assert (cards["imagenet100"].augment["eval_resize"], cards["imagenet100"].augment["eval_center_crop"]) == (256, 224)
    assert cards["imagenet100"].recipe["optimizer"] == "adam" and cards["imagenet100"].recipe["batch_size"] == 64
    assert cards["cifar100"].mean == (0.5071, 0.4865, 0.4409)
    assert [c.download for c in (cards["cifar10"], cards["fashion-mnist"], cards["tiny-imagenet"])] == [True, True,
                                                                                                       False]
    assert "/usr/share/datasets/fashion-mnist" in cards["fashion-mnist"].search


def test_card_names_are_forgiving_and_unknown_names_suggest():
    assert data.get_card("CIFAR-10").name == "cifar10"
    assert data.get_card("tiny_imagenet").name == "tiny-imagenet"
    with pytest.raises(ChanaxisError, match=r"unknown dataset 'cifr100'.*did you mean 'cifar100'.*valid names: cifar10"):
        data.get_card("cifr100")
    with pytest.raises(ChanaxisError, match="does not exist"):
        data.load_dataset("./no/such/dir")


# ---------------------------------------------------------------------------------------------------------- CIFAR

def test_cifar10_pickles(tmp_path):
    d = write_cifar10(tmp_path)
    h = data.load_dataset("cifar10", root=tmp_path)
    assert h.root == str(d) and h.split == "train" and h.num_classes == 10 and h.image_size == 32
    assert len(h.dataset) == 20 and h.classes[0] == "airplane"
    with open(d / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    x, y = h.dataset[4]  # first image of batch 2
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and y == raw[b"labels"][0]
    img = raw[b"data"][0].reshape(3, 32, 32).astype(np.float32) / 255
    want = (img - np.array(h.card.mean)[:, None, None]) / np.array(h.card.std)[:, None, None]
    np.testing.assert_allclose(x.numpy(), want, atol=1e-5)
    t = data.load_dataset("cifar10", split="test", root=tmp_path)
    assert len(t.dataset) == 6 and t.split == "test"
    assert data.load_dataset("cifar10", split="val", root=tmp_path).split == "test"  # val/test alias the eval split
    tr = data.load_dataset("cifar10", root=tmp_path, transform="train")
    assert tr.dataset[4][0].shape == (3, 32, 32) and tr.dataset[4][1] == y
    xb, yb = next(iter(torch.utils.data.DataLoader(h.dataset, batch_size=8, num_workers=0)))
    assert xb.shape == (8, 3, 32, 32) and yb.dtype == torch.int64
    np.testing.assert_array_equal(h.targets, [h.dataset[i][1] for i in range(20)])


def test_cifar100_pickles_fine_labels_and_meta_names(tmp_path):
    write_cifar100(tmp_path)
    h = data.load_dataset("cifar100", root=tmp_path, split="train")
    assert len(h.dataset) == 7 and h.num_classes == 100
    assert h.targets.tolist() == [97, 3, 50, 0, 99, 12, 7]
    assert h.classes[97] == "name97" and len(h.classes) == 100
    assert len(data.load_dataset("cifar100", root=tmp_path, split="test").dataset) == 3


def test_cifar_found_through_chanaxis_data(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "cifar10")
    monkeypatch.setenv("CHANAXIS_DATA", str(tmp_path))
    assert data.locate("cifar10") == tmp_path / "cifar10" / "cifar-10-batches-py"
    avail = {a.name: a for a in data.availability()}
    assert avail["cifar10"].available and avail["cifar10"].where.endswith("cifar-10-batches-py")
    assert not avail["cifar100"].available and avail["cifar100"].where is None
    assert avail["digits"].available and avail["synthetic"].available


def test_missing_dataset_names_the_paths_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("CHANAXIS_DATA", str(tmp_path))
    with pytest.raises(ChanaxisError, match="cifar10 not found") as e:
        data.load_dataset("cifar10")
    msg = str(e.value)
    assert str(tmp_path / "cifar10") in msg and ".cache/chanaxis/cifar10" in msg and "--download" in msg
    assert "\n" not in msg
    with pytest.raises(ChanaxisError, match=re.escape(str(tmp_path / "elsewhere"))):
        data.load_dataset("tiny-imagenet", root=tmp_path / "elsewhere")


def test_download_uses_torchvision_then_reads_the_pickles(tmp_path, monkeypatch):
    import torchvision.datasets as tvd
    calls = []

    class FakeCIFAR10:  # stands in for the network: writes what torchvision would unpack
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            if not (Path(root) / "cifar-10-batches-py").exists():
                write_cifar10(Path(root))

    monkeypatch.setattr(tvd, "CIFAR10", FakeCIFAR10)
    h = data.load_dataset("cifar10", root=tmp_path / "dl", download=True)
    assert calls and calls[0] == (str(tmp_path / "dl"), True, True)
    assert len(h.dataset) == 20 and h.root == str(tmp_path / "dl" / "cifar-10-batches-py")


# ------------------------------------------------------------------------------------------------- Tiny-ImageNet

def test_tiny_imagenet_tree(tmp_path):
    d, wnids = write_tiny(tmp_path)
    h = data.load_dataset("tiny-imagenet", root=tmp_path)
    assert h.root == str(d) and h.classes == wnids and len(h.dataset) == 6 and h.num_classes == 200
    for i in range(len(h.dataset)):
        x, y = h.dataset[i]
        assert x.shape == (3, 64, 64)
        np.testing.assert_allclose(_mean_rgb(x, h.card), COLORS[y], atol=4)
    v = data.load_dataset("tiny-imagenet", split="val", root=tmp_path)
    assert v.split == "val" and v.targets.tolist() == [wnids.index(w) for w in
                                                       ["n02124075", "n09999999", "n01443537", "n02124075"]]
    np.testing.assert_allclose(_mean_rgb(v.dataset[1][0], v.card), COLORS[wnids.index("n09999999")], atol=4)
    assert data.load_dataset("tiny-imagenet", root=tmp_path, transform="train").dataset[0][0].shape == (3, 64, 64)


# -------------------------------------------------------------------------------------------------- ImageNet-100

def test_imagenet100_subset_keeps_wnid_file_positions(tmp_path):
    wnids = (Path(data.get_card("imagenet100").path).parent / "imagenet100_wnids.txt").read_text().split()
    picked = [wnids[5], wnids[42], wnids[99]]
    for k, w in enumerate(picked):
        _jpeg(tmp_path / "train" / w / f"{w}_0.JPEG", COLORS[k], size=(300, 200))
        _jpeg(tmp_path / "train" / w / f"{w}_1.JPEG", COLORS[k], size=(120, 160))
        _jpeg(tmp_path / "val" / w / f"ILSVRC2012_val_{k}.JPEG", COLORS[k])
    _jpeg(tmp_path / "train" / "n00000001" / "x.JPEG", COLORS[0])  # a synset outside ImageNet-100 is ignored
    with pytest.warns(UserWarning, match="97 of 100 synsets missing"):
        h = data.load_dataset("imagenet100", root=tmp_path)
    assert h.num_classes == 100 and h.classes == wnids and len(h.missing_classes) == 97
    assert h.targets.tolist() == [5, 5, 42, 42, 99, 99]
    x, y = h.dataset[2]
    assert x.shape == (3, 224, 224) and y == 42
    np.testing.assert_allclose(_mean_rgb(x, h.card), COLORS[1], atol=4)
    with pytest.warns(UserWarning):
        v = data.load_dataset("imagenet100", split="val", root=tmp_path, image_size=96)
    assert v.targets.tolist() == [5, 42, 99] and v.dataset[0][0].shape == (3, 96, 96)


# ------------------------------------------------------------------------------------------------- Fashion-MNIST

@needs_fmnist
def test_fashion_mnist_from_the_debian_package():
    h = data.load_dataset("fashion-mnist")
    t = data.load_dataset("fashion-mnist", split="test")
    assert h.root == str(FMNIST) and len(h.dataset) == 60000 and len(t.dataset) == 10000
    assert np.bincount(h.targets).tolist() == [6000] * 10 and np.bincount(t.targets).tolist() == [1000] * 10
    x, y = h.dataset[0]
    assert x.shape == (3, 32, 32) and 0 <= y < 10
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # greyscale replicated
    with gzip.open(FMNIST / "train-labels-idx1-ubyte.gz") as f:
        assert y == f.read()[8]
    with gzip.open(FMNIST / "t10k-images-idx3-ubyte.gz") as f:
        first = np.frombuffer(f.read(), np.uint8, offset=16)[:784].reshape(28, 28)
    native = data.load_dataset("fashion-mnist", split="test", image_size=28).dataset[0][0]
    np.testing.assert_allclose(native[0].numpy(), (first / 255 - 0.2860) / 0.3530, atol=1e-5)


@needs_fmnist
def test_fashion_mnist_in_torchvision_raw_layout(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (raw / f).symlink_to(FMNIST / f)
    h = data.load_dataset("fashion-mnist", split="test", root=tmp_path)
    assert h.root == str(raw) and len(h.dataset) == 10000
    with pytest.raises(ChanaxisError, match="train-images-idx3-ubyte.gz.*missing"):
        data.load_dataset("fashion-mnist", split="train", root=tmp_path)


# ------------------------------------------------------------------------------------------ digits and synthetic

def test_digits_split_is_seeded_and_disjoint():
    tr, te = data.load_dataset("digits"), data.load_dataset("digits", split="test")
    assert len(tr.dataset) + len(te.dataset) == 1797 and len(te.dataset) == 359
    x, y = tr.dataset[0]
    assert x.shape == (3, 32, 32) and set(tr.targets.tolist()) == set(range(10))
    assert torch.equal(x, data.load_dataset("digits").dataset[0][0])
    pix = lambda h: {h.dataset.images[i].tobytes() + bytes([h.targets[i]]) for i in range(len(h.dataset))}
    assert len(pix(tr) & pix(te)) < 5  # sklearn digits holds a few exact duplicates, nothing more


def test_synthetic_is_deterministic_by_seed():
    a = data.load_dataset("synthetic")
    assert len(a.dataset) == 2000 and len(data.load_dataset("synthetic", split="test").dataset) == 500
    x0, y0 = a.dataset[17]
    assert torch.equal(x0, data.load_dataset("synthetic").dataset[17][0]) and y0 == 7
    assert not torch.equal(x0, data.load_dataset("synthetic", seed=1).dataset[17][0])
    assert not torch.equal(x0, data.load_dataset("synthetic", split="test").dataset[17][0])
    assert not torch.equal(x0, a.dataset[27][0])  # same class, another image
    assert abs(float(torch.stack([a.dataset[i][0] for i in range(200)]).mean())) < 0.2  # card mean/std fit


def test_synthetic_is_learnable_by_a_tiny_cnn():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threading only adds overhead on a shared machine
    try:
        acc = _train_tiny_cnn()
    finally:
        torch.set_num_threads(threads)
    assert acc > 0.5, acc  # chance is 0.1


def _train_tiny_cnn():
    torch.manual_seed(0)
    tr, te = data.load_dataset("synthetic"), data.load_dataset("synthetic", split="test")
    x = torch.stack([tr.dataset[i][0] for i in range(500)])
    y = torch.as_tensor(tr.targets[:500])
    xt = torch.stack([te.dataset[i][0] for i in range(300)])
    yt = torch.as_tensor(te.targets[:300])
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(6):
        for b in torch.randperm(500).split(50):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[b]), y[b]).backward()
            opt.step()
    with torch.no_grad():
        return (net(xt).argmax(1) == yt).float().mean().item()


# --------------------------------------------------------------------------------------------------- ImageFolder

def test_imagefolder_flat_and_split_layouts(tmp_path):
    flat = tmp_path / "flat"
    for k, c in enumerate(["dog", "cat"]):
        for j in range(3):
            _jpeg(flat / c / f"{j}.jpg", COLORS[k], size=(40, 30))
    h = data.load_dataset(str(flat), image_size=32)
    assert h.name == "flat" and h.classes == ["cat", "dog"] and h.num_classes == 2 and len(h.dataset) == 6
    assert h.dataset[0][0].shape == (3, 32, 32) and h.card.mean == data.IMAGENET_MEAN
    np.testing.assert_allclose(_mean_rgb(h.dataset[0][0], h.card), COLORS[1], atol=4)  # cat was drawn second
    assert len(data.load_dataset(flat, split="val", image_size=32).dataset) == 6  # one split serves as both
    assert data.load_dataset(flat).image_size == 224

    split = tmp_path / "split"
    for s, n in (("train", 3), ("val", 2)):
        for c in ("a", "b"):
            for j in range(n):
                _jpeg(split / s / c / f"{j}.png", COLORS[0])
    assert len(data.load_dataset(split).dataset) == 6
    v = data.load_dataset(split, split="val", transform="train", image_size=48)
    assert len(v.dataset) == 4 and v.split == "val" and v.dataset[3][0].shape == (3, 48, 48) and v.dataset[3][1] == 1


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_names_the_file(tmp_path, damage):
    root = tmp_path / "ds"
    _jpeg(root / "a" / "good.jpg", COLORS[0])
    _jpeg(root / "b" / "bad.jpg", COLORS[1], size=(128, 128))
    bad = root / "b" / "bad.jpg"
    raw = bad.read_bytes()
    bad.write_bytes(b"not an image at all" if damage == "garbage" else raw[: len(raw) // 2])
    h = data.load_dataset(root, image_size=32)
    assert h.dataset[0][1] == 0
    with pytest.raises(ChanaxisError, match=r"cannot read image .*b/bad\.jpg"):
        h.dataset[1]
    with pytest.raises(ChanaxisError, match=r"bad\.jpg"):
        data.load_dataset(root, verify=True)


# ------------------------------------------------------------------------------------------------ reader registry

def test_a_registered_reader_serves_its_format(monkeypatch):
    monkeypatch.setitem(data.READERS, "synthetic", data.READERS["synthetic"])  # put back after the test
    seen = []

    @data.register_reader("synthetic", where="made by the test")
    def read(card, root, split, transform, *, seed, verify):
        seen.append((card.name, root, split, seed, verify))
        labels = np.array([0, 1, 2], dtype=np.int64)
        return data.Loaded(data.ArrayDataset(np.full((3, 1, 8, 8), 128, np.uint8), labels, transform), labels, None)

    h = data.load_dataset("synthetic", split="val", image_size=8, seed=5, verify=True)
    assert seen == [("synthetic", None, "test", 5, True)]
    assert len(h) == 3 and h.targets.tolist() == [0, 1, 2] and h.classes == [str(k) for k in range(10)]
    assert h.dataset[0][0].shape == (3, 8, 8) and h.root is None
    assert {a.name: a.where for a in data.availability()}["synthetic"] == "made by the test"


def test_unknown_format_names_the_known_ones(monkeypatch):
    monkeypatch.delitem(data.READERS, "synthetic")
    with pytest.raises(ChanaxisError, match=r"unknown format 'synthetic'.*known formats: cifar-pickle, idx-gz, "):
        data.load_dataset("synthetic")
    assert data.locate("synthetic") is None


# --------------------------------------------------------------------------------------------- calibration indices

def test_calibration_indices_follow_the_rng_formula():
    idx = data.calibration_indices(50000, 5000, 42)
    np.testing.assert_array_equal(idx, np.random.default_rng(42).choice(50000, 5000, replace=False))
    assert len(np.unique(idx)) == 5000
    with pytest.warns(UserWarning, match="only 30"):
        small = data.calibration_indices(30, 100, 0)
    np.testing.assert_array_equal(small, np.random.default_rng(0).choice(30, 30, replace=False))
    sha = data.indices_sha256(idx)
    assert sha == hashlib.sha256(idx.astype("<i8").tobytes()).hexdigest()
    assert sha == data.indices_sha256(idx.astype(np.int32).tolist())
    assert sha != data.indices_sha256(data.calibration_indices(50000, 5000, 43))
