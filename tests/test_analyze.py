"""`chanaxis analyze` end to end on a tiny model and `synthetic`: every stage, the store nodes, the figures, the
report's numbers against the stored ones, resume without redoing stages, and bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest

import chanaxis
from chanaxis.errors import ChanaxisError
from chanaxis.study import analyze

from conftest import TINY


@pytest.fixture(scope="module")
def study(tiny_study):
    return tiny_study


def test_every_stage_writes_its_node(study):
    out, _ = study
    tree = chanaxis.open_run(out / "run.zarr")
    status = tree.attrs["status"]
    for stage in ("capture", "metrics", "lesion", "pruning"):
        assert status.get(stage) == "done", stage
    assert {"samples", "layers", "graph", "metrics", "structure", "lesion", "pruning", "trajectory"} <= set(
        tree.children)
    assert tree["trajectory"].sizes["checkpoint"] == 3
    assert tree.attrs["preset"]["name"] == "quick"


def test_figures_are_nonempty_pngs(study):
    out, summary = study
    names = {p.split("/")[-1] for p in summary["figures"]}
    assert {"two_axis_plane.png", "spearman_matrix.png", "pruning_curves.png", "trajectory.png",
            "lesion_predictors.png"} <= names
    for p in summary["figures"]:
        data = open(p, "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_compare_figures_put_runs_side_by_side(study, tmp_path):
    from chanaxis.cli.main import main
    out, _ = study
    assert main(["compare", str(out), str(out / "run.zarr"), "--figures", str(tmp_path / "fig"), "--json"]) == 0
    for name in ("compare_planes.png", "compare_pruning.png"):
        data = (tmp_path / "fig" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_report_numbers_equal_the_store(study):
    out, summary = study
    tree = chanaxis.open_run(out / "run.zarr")
    s = tree["structure"].to_dataset().compute()
    h = summary["alignment"]["ix_vs_it"]
    assert h["mean"] == pytest.approx(float(s["spearman_mean"].sel(metric="input_capture", metric2="task_info")))
    assert summary["groupings"]["ari_mean"] == pytest.approx(float(np.nanmean(s["ari"].values)))
    for row, q in zip(summary["by_depth"], s["q_r"].values):
        assert row["q_r"] == pytest.approx(float(q))
    t = tree["trajectory"].to_dataset().compute()
    assert summary["trajectory"]["coupling_init"] == pytest.approx(float(t["coupling_ix_it_mean"].values[0]))
    assert summary["trajectory"]["coupling_end"] == pytest.approx(float(t["coupling_ix_it_mean"].values[-1]))
    p = tree["pruning"].to_dataset().compute()
    for i, r in enumerate(p["regime"].values):
        for j, m in enumerate(p["method"].values):
            assert summary["pruning"]["auc"][str(r)][str(m)] == pytest.approx(float(p["auc_mean"].values[i, j]))
    les = tree["lesion"].to_dataset().compute()
    assert summary["lesion"]["damage_loss_mean_nats"] == pytest.approx(float(np.nanmean(les["damage_loss"].values)))
    saved = json.loads((out / "run_summary.json").read_text())
    assert saved["alignment"] == summary["alignment"]


def test_rerun_redoes_nothing(study, capsys):
    out, _ = study
    before = {p: p.stat().st_mtime_ns for p in (out / "run.zarr").rglob("*") if p.is_file()}
    analyze("test_resnet", "synthetic", out, preset="quick", overrides=TINY, progress=False, estimate=False,
            stages="train,capture,metrics,trajectory,lesion,prune")
    after = {p: p.stat().st_mtime_ns for p in (out / "run.zarr").rglob("*") if p.is_file()}
    assert before == after


def test_bad_input(tmp_path, study):
    out, _ = study
    with pytest.raises(ChanaxisError, match="unknown preset"):
        analyze("test_resnet", "synthetic", tmp_path / "a", preset="fast", progress=False)
    with pytest.raises(ChanaxisError, match="different study"):
        analyze("test_resnet", "digits", out, preset="quick", overrides=TINY, progress=False, estimate=False)
    with pytest.raises(ChanaxisError, match="needs 'metrics'"):
        analyze("test_resnet", "synthetic", tmp_path / "b", preset="quick", overrides=TINY, progress=False,
                estimate=False, stages="lesion")
    with pytest.raises(ChanaxisError, match="unknown stage"):
        analyze("test_resnet", "synthetic", tmp_path / "c", stages="train,lesions", progress=False)
    ckpt = out / "train" / "checkpoints" / "best.pt"
    with pytest.raises(ChanaxisError, match="tiny-imagenet not found"):  # the data is checked before anything else
        analyze("test_resnet", "tiny-imagenet", tmp_path / "d", checkpoint=ckpt, progress=False, estimate=False,
                stages="capture", data_root=str(tmp_path))
    from PIL import Image
    for cls in ("a", "b"):  # a 10-class checkpoint on a 2-class ImageFolder
        (tmp_path / "two" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(tmp_path / "two" / cls / f"{i}.png")
    with pytest.raises(ChanaxisError, match="does not fit"):
        analyze("test_resnet", str(tmp_path / "two"), tmp_path / "d2", checkpoint=ckpt, progress=False,
                estimate=False, stages="capture")
    r = subprocess.run([sys.executable, "-m", "chanaxis.cli.main", "analyze", "test_resnet", "-d", "synthetic",
                        "--preset", "nope", "--out", str(tmp_path / "e")], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice: 'nope'" in r.stderr and "Traceback" not in r.stderr
