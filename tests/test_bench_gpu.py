"""bench/gpu.py at toy sizes on the CPU (`--device cpu --tiny`): every section runs and reports finite, positive
figures — forward, model pass and capture in fp32 and bf16, the loader, lesions, fine-tuning and the projection of
the paper preset. The figures themselves mean nothing here; the GPU run is `bash bench/gpu.sh`."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("== 1. forward vs capture", "== 2. lesions", "== 3. fine-tuning", "== 5. projection")


def positive(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def test_gpu_bench_tiny_on_cpu(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("OUT", None)
    p = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--device", "cpu", "--tiny", "--no-metrics",
                        "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")],
                       capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    text = p.stdout + p.stderr
    assert p.returncode == 0, text[-3000:]
    for s in SECTIONS:
        assert s in p.stdout, f"section {s!r} missing:\n{text[-3000:]}"
    assert "FAILED" not in p.stdout, text[-3000:]
    r = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert (tmp_path / "out" / "gpu.txt").read_text().strip().splitlines()[-1].startswith("done in")

    cap = r["capture"]
    assert positive(cap["loader_median"])
    for prec in ("fp32", "bf16"):
        for k in ("forward_median", "model_pass_median", "capture_median"):
            assert positive(cap[prec][k]), (prec, k, cap[prec])

    les = r["lesion"]
    for prec in ("fp32", "bf16"):
        assert positive(les[prec]["channel_images_per_s"]), les[prec]
        assert positive(les[prec]["replace_channel_images_per_s"]), les[prec]
        assert les[prec]["modes"] == ["suffix"]
    assert positive(les["end_to_end"]["channel_images_per_s"])

    ft = r["finetune"]
    assert positive(ft["loader_median"])
    assert all(positive(ft["finetune_median"][prec]) for prec in ("fp32", "bf16")), ft["finetune_median"]
    assert set(ft["step_median"]) == {"train stage", "finetune bf16", "finetune fp32"}
    assert all(positive(v) for v in ft["step_median"].values()), ft["step_median"]

    proj = r["projection"]
    rows = {row["stage"]: row for row in proj["rows"]}
    assert set(rows) == {"train", "capture", "metrics", "trajectory", "lesion", "prune", "report"}
    for stage in ("train", "capture", "trajectory", "lesion", "prune"):
        assert positive(rows[stage]["seconds"]), rows[stage]
    for stage in ("capture", "lesion", "prune"):  # the same with bf16 passes
        assert positive(rows[stage]["seconds_bf16"]), rows[stage]
    assert positive(proj["total_seconds"])
    c = proj["counts"]  # the paper preset's counts, read from the preset objects
    assert c["epochs"] == 30 and c["train_batch"] == 64 and c["checkpoints"] == 8
    assert c["prune_cells"] == 10 * 10 * 5 and c["prune_finetune_images_per_cell"] == 5 * 200 * 128
