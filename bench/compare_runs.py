"""Compare every stored array of two `chanaxis analyze` folders (run.zarr and trajectory.zarr), e.g. the quick study
made by two versions of chanaxis with the same seeds. Arrays with a labelled dimension (`metric` of
/lesion/predictors) are aligned by label first, so a different order of the same values is not a difference.

    .venv/bin/python bench/compare_runs.py OLD_STUDY NEW_STUDY
"""
import sys
from pathlib import Path

import numpy as np
import xarray as xr
import zarr


def arrays(path: Path) -> dict:
    out = {}

    def walk(g, prefix):
        for k, a in g.arrays():
            out[f"{prefix}{k}"] = np.asarray(a[...])
        for k, sub in g.groups():
            walk(sub, f"{prefix}{k}/")
    walk(zarr.open_group(str(path), mode="r"), "")
    return out


def by_label(a_path: Path, b_path: Path, node: str, dim: str) -> dict:
    """Largest difference per variable of `node` after aligning `dim` by label."""
    a = xr.open_zarr(str(a_path), group=node, consolidated=False).load()
    b = xr.open_zarr(str(b_path), group=node, consolidated=False).load().sel({dim: a[dim].values})
    return {f"{node}/{v}": _diff(a[v].values, b[v].values) for v in a.data_vars}


def _diff(x, y) -> float:
    if x.shape != y.shape:
        return float("inf")
    if x.dtype.kind not in "fc":
        return 0.0 if np.array_equal(x, y) else float("inf")
    x, y = x.astype(np.float64), y.astype(np.float64)
    if not (np.isnan(x) == np.isnan(y)).all():
        return float("inf")
    d = np.abs(np.where(np.isnan(x), 0, x) - np.where(np.isnan(y), 0, y))
    return float(d.max()) if d.size else 0.0


def main(old: Path, new: Path) -> None:
    rows = []
    for name in ("run.zarr", "trajectory.zarr"):
        A, B = arrays(old / name), arrays(new / name)
        if set(A) != set(B):
            print(f"{name}: arrays only in one: {sorted(set(A) ^ set(B))[:10]}")
        labelled = "lesion/predictors/"
        rows += [(_diff(A[k], B[k]), f"{name}/{k}") for k in sorted(set(A) & set(B)) if not k.startswith(labelled)]
        if name == "run.zarr" and "lesion/predictors/metric" in A:
            rows += [(d, f"{name}/{k}") for k, d in by_label(old / name, new / name, "lesion/predictors",
                                                                "metric").items()]
    rows.sort(reverse=True)
    print(f"{len(rows)} arrays compared; {sum(d > 1e-10 for d, _ in rows)} differ by more than 1e-10")
    for d, k in rows[:12]:
        print(f"  {d:.3g}  {k}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
