"""Training with a checkpoint schedule: files, manifest, determinism, resume after SIGKILL, bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import chanaxis
from chanaxis.errors import ChanaxisError
from chanaxis.training import default_schedule, param_groups, parse_schedule, resolve_recipe, train

ARGS = dict(epochs=3, train_subset=256, batch_size=32, max_batches_per_epoch=2, eval_subset=64, seed=0, progress=False)
CLI_ARGS = ["--epochs", "3", "--train-subset", "256", "--batch-size", "32", "--max-batches", "2", "--eval-subset", "64",
            "--seed", "0", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    manifest = train("test_resnet", "synthetic", out, **ARGS)
    return out, manifest


def _sd(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_scheduled_checkpoints_and_manifest(run):
    out, m = run
    assert m["schedule"] == default_schedule(3) and m["status"] == "done" and m["epochs_done"] == 3
    for e in m["schedule"]:
        assert (out / "checkpoints" / f"epoch_{e:04d}.pt").is_file()
        assert m["checkpoints"][str(e)] == f"checkpoints/epoch_{e:04d}.pt"
    assert json.loads((out / "manifest.json").read_text()) == m
    assert [h["epoch"] for h in m["history"]] == [0, 1, 2, 3]
    accs = [h["eval_acc"] for h in m["history"]]
    assert m["best"]["epoch"] == int(np.argmax(accs)) and m["best"]["eval_acc"] == max(accs)
    assert all(0 <= a <= 100 for a in accs) and m["units"]["acc"] == "%" and "nats" in m["units"]["loss"]
    assert m["model"]["name"] == "test_resnet" and m["model"]["num_classes"] == 10 and m["model"]["init_seed"] == 0
    assert m["recipe"]["optimizer"] == "sgd" and m["recipe"]["batch_size"] == 32 and m["recipe"]["epochs"] == 3
    assert m["max_batches_per_epoch"] == 2
    assert m["dataset"]["train_subset"] == 256 and m["dataset"]["name"] == "synthetic"
    # epoch 0 is the initialisation: the weights load_model gives for the seed
    init = chanaxis.load_model("test_resnet", num_classes=10, image_size=32, init_seed=0).module.state_dict()
    _assert_same(_sd(out / "checkpoints/epoch_0000.pt"), init)
    state = torch.load(out / "state.pt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 3
    _assert_same(_sd(out / "checkpoints/epoch_0003.pt"), state["model"])
    _assert_same(_sd(out / "checkpoints/best.pt"), _sd(out / f"checkpoints/epoch_{m['best']['epoch']:04d}.pt"))
    assert not torch.equal(_sd(out / "checkpoints/epoch_0000.pt")["fc.weight"], state["model"]["fc.weight"])
    # the model learned something: training loss fell
    assert m["history"][3]["train_loss"] < m["history"][1]["train_loss"]


def test_same_seed_same_weights_other_seed_not(run, tmp_path):
    out, _ = run
    again = train("test_resnet", "synthetic", tmp_path / "again", **ARGS)
    for e in again["schedule"]:
        _assert_same(_sd(out / f"checkpoints/epoch_{e:04d}.pt"), _sd(tmp_path / f"again/checkpoints/epoch_{e:04d}.pt"))
    other = train("test_resnet", "synthetic", tmp_path / "other", **{**ARGS, "seed": 1, "epochs": 1,
                                                                      "max_batches_per_epoch": 1})
    assert other["history"][1]["train_loss"] is not None
    assert not torch.equal(_sd(out / "checkpoints/epoch_0000.pt")["fc.weight"],
                           _sd(tmp_path / "other/checkpoints/epoch_0000.pt")["fc.weight"])


def test_finished_run_reruns_without_training(run):
    out, m = run
    before = (out / "state.pt").stat().st_mtime_ns
    again = train("test_resnet", "synthetic", out, **ARGS)
    assert again["history"] == m["history"] and (out / "state.pt").stat().st_mtime_ns == before


def _cli(*args):
    return [sys.executable, "-m", "chanaxis.cli.main", *args]


def test_resume_after_sigkill_equals_uninterrupted(run, tmp_path):
    ref, _ = run
    out = tmp_path / "killed"
    cmd = _cli("train", "test_resnet", "-d", "synthetic", *CLI_ARGS, "--out", str(out))
    # the killed part runs in a subprocess, the rest here: both with this process's thread count (weight gradients
    # are sums whose order follows it), whatever an earlier test left in the environment
    threads = str(torch.get_num_threads())
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:  # the manifest is rewritten atomically after each epoch, just before state.pt
            if json.loads((out / "manifest.json").read_text())["epochs_done"] >= 1 and (out / "state.pt").exists():
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.01)
    assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(out / "state.pt", map_location="cpu", weights_only=False)["epoch"]
    assert 0 <= killed_at < 3
    from chanaxis.cli.main import main
    assert main(cmd[3:]) == 0  # the same command again (in this process, to save an interpreter start)
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "done" and m["resumed_at"] == [killed_at + 1]
    for e in m["schedule"]:
        _assert_same(_sd(ref / f"checkpoints/epoch_{e:04d}.pt"), _sd(out / f"checkpoints/epoch_{e:04d}.pt"))
    a = torch.load(ref / "state.pt", map_location="cpu", weights_only=False)
    b = torch.load(out / "state.pt", map_location="cpu", weights_only=False)
    _assert_same(a["model"], b["model"])
    assert a["manifest"]["history"][-1]["eval_loss"] == b["manifest"]["history"][-1]["eval_loss"]


def test_bad_inputs(run, tmp_path):
    out, _ = run
    with pytest.raises(ChanaxisError, match="beyond the 3 training epochs"):
        train("test_resnet", "synthetic", tmp_path / "a", checkpoints="0,1,5", **{**ARGS, "epochs": 3})
    with pytest.raises(ChanaxisError, match="'lr_decay'"):
        train("test_resnet", "synthetic", tmp_path / "b", recipe={"lr_decay": 0.1}, **ARGS)
    with pytest.raises(ChanaxisError, match="different training run.*seed"):
        train("test_resnet", "synthetic", out, **{**ARGS, "seed": 7})
    with pytest.raises(ChanaxisError, match="different training run.*model"):
        train("test_convnext", "synthetic", out, **ARGS)
    with pytest.raises(ChanaxisError, match="negative"):
        parse_schedule("-1,2", 3)
    with pytest.raises(ChanaxisError, match="comma-separated"):
        parse_schedule("0,one", 3)
    with pytest.raises(ChanaxisError, match="unknown optimizer"):
        resolve_recipe(chanaxis.data.get_card("synthetic"), "x", {"optimizer": "lbfgs"})
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(ChanaxisError, match="not a chanaxis training run"):
        train("test_resnet", "synthetic", tmp_path / "junk", **ARGS)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_unknown_parameter_names_the_nearest(tmp_path):
    with pytest.raises(ChanaxisError, match="'epocs'.*did you mean 'epochs'"):
        chanaxis.train("test_resnet", "synthetic", tmp_path / "typo", epocs=1)
    with pytest.raises(ChanaxisError, match="max_batches_per_epoch"):
        chanaxis.train("test_resnet", "synthetic", tmp_path / "typo", max_batches_per_epoch=0)
    assert not (tmp_path / "typo").exists()


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    from chanaxis.cli.main import main
    rc = main(["train", "test_resnet", "-d", "synthetic", "--recipe", "lr_decay=0.1", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "lr_decay" in err
    assert len([l for l in err.splitlines() if l.strip()]) == 1, err


def test_schedule_and_recipe_rules():
    for epochs in (1, 3, 7, 15, 100):
        s = default_schedule(epochs)
        assert s[0] == 0 and s[-1] == epochs and s == sorted(set(s))
        assert {e for e in (1, 2, 3, 5, 10, 20) if e <= epochs} <= set(s)
    card = chanaxis.data.get_card("cifar100")
    assert resolve_recipe(card, "vgg16_bn")["lr"] == card.recipe["lr_by_model"]["vgg*"]
    r = resolve_recipe(card, "resnet18", {"lr": 0.2}, epochs=4, batch_size=32)
    assert (r["lr"], r["epochs"], r["batch_size"]) == (0.2, 4, 32)


def test_pretrained_backbone_gets_scaled_lr():
    model = chanaxis.load_model("test_resnet", num_classes=10, image_size=32)
    r = resolve_recipe(chanaxis.data.get_card("synthetic"), "test_resnet")
    groups = {g.get("name"): g for g in param_groups(model.module, model.exclude_prefixes, r, pretrained=True)}
    head = {id(p) for p in model.module.fc.parameters()}
    assert {id(p) for p in groups["head"]["params"]} == head and groups["head"]["lr"] == r["lr"]
    assert groups["backbone"]["lr"] == pytest.approx(r["lr"] * r["pretrained_lr_scale"])
    n_all = sum(1 for _ in model.module.parameters())
    assert len(groups["backbone"]["params"]) + len(head) == n_all
