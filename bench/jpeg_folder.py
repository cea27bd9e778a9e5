"""A generated folder in ImageNet-100's real on-disk format: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG, 500×375 RGB
JPEGs at quality 90 (ImageNet's typical size), with photo-like content (smooth colour fields, edges and texture) so
the decoder works as hard as on real photographs. chanaxis reads it with `--dataset imagenet100 --data-root DIR`.

    .venv/bin/python bench/jpeg_folder.py DIR [--per-class 4] [--classes 100] [--val-per-class 2]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def photo(rng: np.random.Generator, w: int = 500, h: int = 375) -> np.ndarray:
    """An H×W×3 uint8 image: a smooth colour field, a few hard-edged shapes and fine-grained texture."""
    coarse = rng.uniform(0, 255, (h // 25 + 2, w // 25 + 2, 3))
    yy, xx = np.linspace(0, coarse.shape[0] - 1.001, h), np.linspace(0, coarse.shape[1] - 1.001, w)
    y0, x0 = yy.astype(int), xx.astype(int)
    fy, fx = (yy - y0)[:, None, None], (xx - x0)[None, :, None]
    c = coarse
    img = ((1 - fy) * (1 - fx) * c[y0][:, x0] + (1 - fy) * fx * c[y0][:, x0 + 1]
           + fy * (1 - fx) * c[y0 + 1][:, x0] + fy * fx * c[y0 + 1][:, x0 + 1])
    gy, gx = np.mgrid[0:h, 0:w]
    for _ in range(6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(20, 120)
        img[(gy - cy) ** 2 + (gx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 18, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make(root: str | Path, per_class: int = 4, classes: int = 100, val_per_class: int = 2, seed: int = 0,
         size: tuple[int, int] = (500, 375)) -> Path:
    """Write the folder (skipping files already there); returns its path."""
    from PIL import Image

    from chanaxis.data.cards import package_text
    root = Path(root)
    wnids = [w for w in package_text("imagenet100_wnids.txt").split() if w.strip()][:classes]
    for split, n in (("train", per_class), ("val", val_per_class)):
        for k, w in enumerate(wnids):
            d = root / split / w
            d.mkdir(parents=True, exist_ok=True)
            for j in range(n):
                f = d / f"{w}_{j}.JPEG"
                if not f.exists():
                    rng = np.random.default_rng([seed, k, j, split == "val"])
                    Image.fromarray(photo(rng, *size)).save(f, quality=90)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--per-class", type=int, default=4)
    ap.add_argument("--val-per-class", type=int, default=2)
    ap.add_argument("--classes", type=int, default=100)
    a = ap.parse_args()
    print(make(a.dir, a.per_class, a.classes, a.val_per_class))


if __name__ == "__main__":
    main()
