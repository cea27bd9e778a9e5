"""Comparing run stores in tests: every array of a zarr store read in full, and what differs between two such reads.

Shared by test_conformance, test_distributed and test_loader (imported as `from storecmp import arrays,
differences`: pytest puts this folder on sys.path).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr


def arrays(path: str | Path, nodes: list[str] | None = None) -> dict:
    """Every array of the zarr store at `path` (under `nodes`, or all of it when None), read in full as numpy and
    keyed by its path in the store ("layers/x/mean"); the bookkeeping done-flags included. A node in `nodes` that
    the store lacks is skipped."""
    root = zarr.open_group(str(path), mode="r")
    out = {}
    if nodes is None:
        _collect(root, "", out)
        return out
    for node in nodes:
        if node not in root:
            continue
        g = root[node]
        if isinstance(g, zarr.Array):
            out[node] = np.asarray(g[...])
        else:
            _collect(g, f"{node}/", out)
    return out


def _collect(group: zarr.Group, prefix: str, out: dict) -> None:
    for k, a in group.arrays():
        out[f"{prefix}{k}"] = np.asarray(a[...])
    for k, sub in group.groups():
        _collect(sub, f"{prefix}{k}/", out)


def differences(a: dict, b: dict, atol: float = 1e-10) -> list[str]:
    """What differs between two dicts of arrays (or strings, e.g. JSON text): names in only one, and values that
    differ: floats beyond `atol` (NaN equal to NaN; `atol=0`: bit for bit), everything else (strings, integers,
    booleans, objects) exactly. Empty when they are the same."""
    out = [f"only in one: {k}" for k in sorted(set(a) ^ set(b))]
    for k in sorted(set(a) & set(b)):
        x, y = a[k], b[k]
        if isinstance(x, str) or isinstance(y, str):
            if not np.array_equal(x, y):
                out.append(f"{k}: {_short(x)} != {_short(y)}")
            continue
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape:
            out.append(f"{k}: shape {x.shape} != {y.shape}")
        elif x.dtype.kind in "OUSTbiu" or atol == 0:
            if not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
                out.append(f"{k}: {_count(x != y)} values differ" + (" (compared exactly)" if atol else ""))
        elif not np.allclose(x, y, rtol=0, atol=atol, equal_nan=True):
            out.append(f"{k}: differs beyond atol={atol:g} (max |a-b| = {_max_gap(x, y)})")
    return out


def _short(s) -> str:
    s = repr(s)
    return s if len(s) <= 60 else s[:57] + "..."


def _count(neq) -> str:
    try:
        return str(int(np.count_nonzero(neq)))
    except (TypeError, ValueError):
        return "some"


def _max_gap(x: np.ndarray, y: np.ndarray) -> str:
    try:
        with np.errstate(invalid="ignore"):
            return f"{float(np.nanmax(np.abs(x.astype(float) - y.astype(float)))):.3g}"
    except (TypeError, ValueError):
        return "?"
