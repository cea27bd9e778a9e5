"""Duration estimates for a study, extrapolated from one measured batch (forward, and forward+backward)."""
from __future__ import annotations

import time

import numpy as np
import torch


def _time(fn, repeat: int = 2) -> float:
    fn()  # warm-up (allocations, kernel selection)
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def measure(model, batch: int = 32) -> tuple[float, float, float]:
    """Seconds per image for an eval forward and a training step, and float64 matmul seconds per FLOP."""
    module = model.module
    dev = next(module.parameters()).device
    x = torch.randn(batch, *model.input_size, device=dev)
    y = torch.randint(0, model.num_classes, (batch,), device=dev)

    def fwd():
        module.eval()
        with torch.no_grad():
            module(x)

    opt = torch.optim.SGD(module.parameters(), lr=0.0)
    state = {k: v.clone() for k, v in module.state_dict().items()}

    def step():
        module.train()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(module(x), y).backward()
        opt.step()

    t_fwd = _time(fwd) / batch
    t_step = _time(step) / batch
    module.load_state_dict(state)  # BN running stats moved during the timed steps
    module.eval()
    a = np.random.default_rng(0).standard_normal((4096, 256))
    t_mm = _time(lambda: a.T @ a) / (4096 * 256 * 256)
    return t_fwd, t_step, t_mm


def estimate_stages(study, stages: list[str]) -> tuple[list[tuple[str, str, float]], float]:
    card = study.card()
    # the study's own build once training is done (no extra build); an untrained one times the same
    model = study.ctx.model(study.run) if study.done("train") else study.load_model()
    t_fwd, t_step, t_mm = measure(model)
    p = study.params
    graph = model.graph
    rows = []
    n_train = study.train_images()  # the dataset was found before any estimate: no fallback size
    n_train = min(n_train, p["train"].train_subset or n_train)
    epochs = p["train"].epochs or int(card.recipe.get("epochs", 30))
    n_cal = p["capture"].n_calibration
    spi = [min(16, l.out_hw[0] * l.out_hw[1]) for l in graph.layers]
    cov_flops = sum(s * l.c_out ** 2 for s, l in zip(spi, graph.layers))
    for s in stages:
        if s == "train":
            rows.append((s, f"{epochs} epochs × {n_train} images", epochs * n_train * (t_step + t_fwd * 0.1)))
        elif s == "capture":
            rows.append((s, f"{n_cal} images", n_cal * t_fwd * 1.5))
        elif s == "metrics":
            # moments dominate for wide layers; hulls, clustering and modularity add roughly as much again
            secs = 2 * n_cal * cov_flops * t_mm + 2.0 * len(graph) + n_cal * t_fwd * 0.5
            rows.append((s, f"{len(graph)} layers", secs))
        elif s == "trajectory":
            ck = p["train"].checkpoints
            n_ck = (len(ck) if isinstance(ck, tuple) else len(str(ck).split(","))) if ck else 8
            n = p["trajectory"].n_calibration
            rows.append((s, f"{n_ck} checkpoints × {n} images",
                         n_ck * (n * t_fwd * 2.0 + 2 * n * cov_flops * t_mm + 2.0 * len(graph))))
        elif s == "lesion":
            n_units = sum(l.c_out for l in graph.layers)
            frac = p["lesion"].fraction
            n_eval = p["lesion"].eval_images or 10000
            n_les = int(np.ceil(n_units * frac))
            # each lesion: the damage and four replacement variants, over the suffix of the network (~half)
            rows.append((s, f"{n_les} channels × {n_eval} images", n_les * n_eval * t_fwd * 5 * 0.5))
        elif s == "prune":
            pr = p["prune"]
            n_methods = len(pr.methods or range(11))
            n_levels, n_seeds = len(pr.levels), len(pr.seeds)
            n_eval = pr.eval_images or 10000
            ft = pr.finetune_epochs * pr.finetune_batches * pr.batch_size * t_step
            per_cell = n_eval * t_fwd * 2 + ft
            rows.append((s, f"{n_methods} methods × {n_levels} levels × {n_seeds} seeds",
                         n_methods * n_levels * n_seeds * per_cell))
        elif s == "report":
            rows.append((s, "tables and figures", 5.0))
    return rows, float(sum(r[2] for r in rows))
