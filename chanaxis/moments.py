"""A layer's calibration moments of (Y, T): computed from the store's samples, or read from the metrics stage's copy.

Both the metrics stage and the interventions (peer replacement) need them; this module is their one home, so no
stage reaches into another's internals for them.
"""
from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import xarray as xr

from . import integrity, store
from .errors import ChanaxisError
from .estimators.stats import Moments


def target_per_sample(grp, layer: str) -> np.ndarray:
    """T (the logit margin, METHOD §1) of the image each local sample of `layer` comes from."""
    margin = np.asarray(grp[store.samples_array("margin")][...], np.float64)
    img = np.asarray(grp[store.layer_array(layer, "image_of_sample")][...])
    return margin[img]


def compute(run, layer: str, scheduler=None) -> Moments:
    """Moments of (Y, T) for one layer: float64 sums accumulated chunk by chunk with dask."""
    grp = store.open_group(run)
    if store.layer_node(layer) not in grp:
        raise ChanaxisError(f"layer '{layer}' is not in the run store '{run}'")
    raw = da.from_zarr(grp[store.layer_array(layer, "local")])
    Y = raw.astype(np.float64)
    T = da.from_array(target_per_sample(grp, layer), chunks=(Y.chunks[0],))
    sums = (Y.sum(0), Y.T @ Y, T.sum(), (T * T).sum(), Y.T @ T)
    kw = {"scheduler": scheduler} if scheduler is not None else {}
    # the chunks' checksums in the same pass as the sums: a missing or damaged chunk is an error, never zeros
    (sy, syy, st, stt, syt), crcs = dask.compute(sums, integrity.block_crcs(raw), **kw)
    chunk = int(store.run_config(grp)["chunk_images"])
    integrity.check(run, f"layer '{layer}'", crcs, integrity.recorded(grp, store.layer_node(layer)), chunk)
    integrity.check(run, "the logit margins", integrity.margin_crcs(grp, chunk),
                    integrity.recorded(grp, store.SAMPLES), chunk)
    return Moments.from_sums(Y.shape[0], sy, syy, st, stt, syt)


def to_dataset(m: Moments) -> xr.Dataset:
    """The moments as variables and attrs of a layer part (so later stages never recompute them)."""
    ds = xr.Dataset({"cov_yy": (("channel", "channel2"), m.cov_yy), "mean_y": ("channel", m.mean_y),
                     "cov_yt": ("channel", m.cov_yt)})
    ds.attrs.update({"n": m.n, "mean_t": m.mean_t, "var_t": m.var_t})
    return ds


def from_dataset(part: xr.Dataset) -> Moments:
    return Moments(part.attrs["n"], part["mean_y"].values, part["cov_yy"].values, part.attrs["mean_t"],
                   part.attrs["var_t"], part["cov_yt"].values)


def load(run, layer: str) -> Moments:
    """The layer's moments: the metrics stage's stored copy when it is there, else computed from the samples."""
    grp = store.open_group(run)
    node = store.metrics_part(layer)
    if node in grp and grp[node].attrs.get("done"):
        return from_dataset(store.read_dataset(run, node))
    return compute(run, layer)
