"""`--download` on the commands that take a dataset: the real download code (torchvision's) against a local file
server that serves an archive in CIFAR-10's real format (cifar-10-python.tar.gz: Python 2 style pickles)."""
import functools
import hashlib
import http.server
import pickle
import tarfile
import threading

import numpy as np
import pytest
import torchvision.datasets as tvd

import chanaxis
from chanaxis.cli.main import main


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _archive(folder):
    """cifar-10-python.tar.gz with the original's members; str keys, as Python 2's pickles load under latin1."""
    d = folder / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        with open(d / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": rng.integers(0, 10, 6).tolist(),
                         "data": rng.integers(0, 256, (6, 3072), dtype=np.uint8), "filenames": ["x.png"] * 6},
                        f, protocol=2)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"], "num_vis": 3072}, f, protocol=2)
    tgz = folder / "cifar-10-python.tar.gz"
    with tarfile.open(tgz, "w:gz") as t:
        t.add(d, arcname="cifar-10-batches-py")
    return tgz, {p.name: _md5(p) for p in d.iterdir()}


@pytest.fixture
def server(tmp_path, monkeypatch):
    served = tmp_path / "served"
    tgz, md5 = _archive(served)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(tvd.CIFAR10, "url", f"http://127.0.0.1:{httpd.server_address[1]}/{tgz.name}")
    monkeypatch.setattr(tvd.CIFAR10, "tgz_md5", _md5(tgz))
    monkeypatch.setattr(tvd.CIFAR10, "train_list", [[f"data_batch_{k}", md5[f"data_batch_{k}"]] for k in range(1, 6)])
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(tvd.CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names",
                                              "md5": md5["batches.meta"]})
    yield httpd
    httpd.shutdown()


def test_capture_downloads_cifar10_and_later_stages_find_it(tmp_path, server, capsys):
    data = tmp_path / "data"
    out = tmp_path / "run.zarr"
    without = main(["capture", "test_resnet", "-d", "cifar10", "--data-root", str(data), "-o", str(out),
                    "--n-calibration", "8", "--quiet"])
    assert without == 2 and "--download" in capsys.readouterr().err
    rc = main(["capture", "test_resnet", "-d", "cifar10", "--data-root", str(data), "-o", str(out),
               "--n-calibration", "8", "--quiet", "--download"])
    assert rc == 0, capsys.readouterr().err
    assert (data / "cifar-10-batches-py" / "data_batch_1").is_file()
    tree = chanaxis.open_run(out)
    assert tree["samples"].sizes["image"] == 8 and tree.attrs["status"]["capture"] == "done"
    from chanaxis.reload import dataset_from_store
    assert len(dataset_from_store(out, split="eval").dataset) == 6  # the test batch, found again from the store


def test_every_dataset_command_takes_download():
    from chanaxis.cli.main import build_parser
    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    with_dataset = [n for n, p in sub.choices.items() if "--dataset" in p._option_string_actions]
    assert set(with_dataset) >= {"capture", "train", "trajectory", "analyze"}
    assert all("--download" in sub.choices[n]._option_string_actions for n in with_dataset)
