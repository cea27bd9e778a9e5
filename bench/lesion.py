"""Lesion throughput: chanaxis (suffix runs, K variants per pass) vs naive full forwards vs captum.

Same ResNet-18 (32 px), same channels, same images, side by side in one run; prints channel×image/s for each and
how far each one's damages (mean cross-entropy increase, nats) are from the naive full-forward lesion. The channels
are a seeded `--fraction` of every analysed layer, as `chanaxis lesion` draws them (the real workload: wide, deep
layers hold most channels).

    .venv/bin/python bench/lesion.py [--checkpoint W.pt] [--images 32] [--fraction 0.02] [--threads 2]

captum is an optional bench dependency: pip install 'chanaxis[bench]'.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

import chanaxis
from chanaxis.interventions.lesion import layer_damages
from chanaxis.interventions.suffix import naive_lesion


def randomise_bn(module, seed=0):
    """timm zero-initialises each block's last BN γ: without trained weights, give every BN random affine/statistics
    so that branch lesions are not trivially 0 (bench/interventions.py imports it from here)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _images(n, seed=0):
    try:
        h = chanaxis.load_dataset("fashion-mnist", split="test")
        idx = np.random.default_rng(seed).choice(len(h.dataset), n, replace=False)
        items = [h.dataset[int(i)] for i in idx]
        return torch.stack([i[0] for i in items]), torch.as_tensor([int(i[1]) for i in items]), "fashion-mnist test"
    except chanaxis.ChanaxisError:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g), "random images"


def _ce(logits, y):
    k = logits.shape[0]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.repeat(k), reduction="none").reshape(k, -1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="ResNet-18 weights (default: seeded random init)")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--fraction", type=float, default=0.02, help="share of each layer's channels (≥ 1 per layer)")
    ap.add_argument("--batch-size", type=int, default=256, help="chanaxis: images × variants per pass")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-captum", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = chanaxis.load_model("resnet18", num_classes=10, image_size=32, checkpoint=a.checkpoint)
    if a.checkpoint is None:
        randomise_bn(model.module)
    x, y, src = _images(a.images)
    layers = model.graph.names
    chans = {l.name: np.sort(np.random.default_rng([0, l.depth]).choice(
        l.c_out, max(1, int(round(a.fraction * l.c_out))), replace=False)) for l in model.graph.layers}
    n_work = sum(len(c) for c in chans.values()) * len(x)
    base_logits, _ = model.run(x)
    base_ce = _ce(base_logits[None], y)[0]
    base = (float(base_ce.mean()), 100.0 * float((base_logits.argmax(1) == y).float().mean()))
    print(f"ResNet-18 32 px ({'checkpoint' if a.checkpoint else 'random init'}), {len(x)} {src}, "
          f"{sum(len(c) for c in chans.values())} channels ({a.fraction:.0%} of each of {len(layers)} layers), "
          f"{a.threads} threads; base loss {base[0]:.3f} nats")

    results, damages = {}, {}
    t = time.perf_counter()
    damages["naive"] = {l: (_ce(naive_lesion(model, x, l, _masks(model, l, c)), y).mean(1) - base_ce.mean()).numpy()
                        for l, c in chans.items()}
    results["naive full forward"] = time.perf_counter() - t

    t = time.perf_counter()
    damages["chanaxis"] = {l: layer_damages(model, l, x, y, c, base, batch_size=a.batch_size)[0]["damage_loss"]
                           for l, c in chans.items()}
    results["chanaxis (suffix, K per pass)"] = time.perf_counter() - t

    if not a.skip_captum:
        from captum.attr import LayerFeatureAblation
        mods = dict(model.module.named_modules())
        model.module.eval()
        t = time.perf_counter()
        dmg = {}
        with torch.no_grad():
            for l, c in chans.items():
                layer = model.graph[l]
                # silence at the same point as chanaxis (after the BN); unchosen channels form one extra group
                mask = torch.full((1, layer.c_out, 1, 1), len(c), dtype=torch.long)
                mask[0, torch.as_tensor(c), 0, 0] = torch.arange(len(c))
                abl = LayerFeatureAblation(lambda inp: F.cross_entropy(model.module(inp), y, reduction="none"),
                                           mods[layer.mask_at])
                attr = abl.attribute(x, layer_baselines=0.0, layer_mask=mask)
                # attribution = loss(original) − loss(ablated), per image: damage is its negated mean
                dmg[l] = -attr[:, torch.as_tensor(c), 0, 0].mean(0).numpy()
        results["captum LayerFeatureAblation"] = time.perf_counter() - t
        damages["captum"] = dmg

    ref = np.concatenate([damages["naive"][l] for l in layers])
    print(f"{'method':34s} {'seconds':>9s} {'channel×image/s':>16s} {'vs captum':>10s} "
          f"{'max |Δ damage| vs naive':>24s}")
    cap = results.get("captum LayerFeatureAblation")
    for (name, sec), key in zip(results.items(), damages):
        err = np.abs(np.concatenate([damages[key][l] for l in layers]) - ref).max()
        ratio = f"{cap / sec:9.1f}×" if cap else "       —"
        print(f"{name:34s} {sec:9.2f} {n_work / sec:16.0f} {ratio:>10s} {err:24.2e} nats")
    if "captum" in damages:
        off = [l for l in layers if np.abs(damages["captum"][l] - damages["naive"][l]).max() > 1e-5]
        print(f"captum differs from the naive lesion (> 1e-5 nats) on {len(off)}/{len(layers)} layers: "
              f"{', '.join(off)}")


def _masks(model, layer, channels):
    from chanaxis.interventions.masks import lesion_variants
    return lesion_variants(model.graph[layer].c_out, channels)


if __name__ == "__main__":
    main()
