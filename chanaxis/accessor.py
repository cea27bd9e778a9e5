"""`ds.chanaxis`: conveniences on a `/metrics` dataset (one row per channel along `unit`)."""
from __future__ import annotations

import numpy as np
import xarray as xr

from .errors import ChanaxisError


@xr.register_dataset_accessor("chanaxis")
class ChanaxisAccessor:
    """Examples (tree = chanaxis.open_run("runs/r18.zarr"); m = tree["metrics"].to_dataset()):

    >>> m.chanaxis.top(10, by="hull_score")              # the 10 most replaceable channels
    >>> m.chanaxis.layer("layer3.0.conv2")["task_info"]   # one layer's channels
    >>> m.chanaxis.layers()                               # analysed layers in depth order
    >>> m.chanaxis.by_group()                             # residual-coupled channels pooled
    >>> m.chanaxis.to_dataframe()                         # pandas, one row per channel
    """

    def __init__(self, ds: xr.Dataset):
        if "unit" not in ds.dims:
            raise ChanaxisError("ds.chanaxis works on the /metrics node (dimension 'unit'): "
                                "tree['metrics'].to_dataset()")
        self._ds = ds

    def layers(self) -> list[str]:
        """The analysed layers' names (list of str), each once, in the order the table first lists them (depth
        order, as the metrics stage writes them)."""
        names = self._ds["layer"].values
        _, first = np.unique(names, return_index=True)
        return [str(names[i]) for i in sorted(first)]

    def layer(self, name: str) -> xr.Dataset:
        """The rows of one layer's channels: an `xr.Dataset` along `unit` with every variable in its own units
        (the `units` attr of each: bits, nats, |cos|, 1…), unchanged. An unknown name is an error naming the
        nearest layers."""
        names = self._ds["layer"].values
        if name not in set(names):
            import difflib
            near = difflib.get_close_matches(name, self.layers(), n=3)
            raise ChanaxisError(f"no layer '{name}' in these metrics" + (f"; did you mean {', '.join(near)}?"
                                                                         if near else ""))
        return self._ds.isel(unit=np.flatnonzero(names == name))

    def top(self, k: int = 10, by: str = "task_info", ascending: bool = False, layer: str | None = None
            ) -> xr.Dataset:
        """The `k` channels with the largest (`ascending`: smallest) value of the per-channel metric `by` (its
        units: that variable's `units` attr, e.g. bits for task_info), over all layers or one `layer`: an
        `xr.Dataset` of k rows along `unit`, best first, every variable in its own units. NaN values come last."""
        ds = self.layer(layer) if layer else self._ds
        if by not in ds:
            raise ChanaxisError(f"no metric '{by}'; available: {', '.join(v for v in ds.data_vars if ds[v].ndim == 1)}")
        vals = np.asarray(ds[by].values, np.float64)
        vals = np.where(np.isnan(vals), np.inf if ascending else -np.inf, vals)
        order = np.argsort(vals if ascending else -vals, kind="stable")[:k]
        return ds.isel(unit=order)

    def by_group(self, reduce: str = "mean") -> xr.Dataset:
        """Per coupling group (channels tied by residual adds share one): an `xr.Dataset` along `group` with each
        per-channel variable reduced over the group's channels by `reduce` (an xarray groupby reduction: mean,
        median, max, sum…), in that variable's units (a sum of bits is bits), plus `n_channels` (a count, 1)."""
        per_unit = self._ds[[v for v in self._ds.data_vars if self._ds[v].dims == ("unit",)]]
        per_unit = per_unit.drop_vars([c for c in ("layer", "channel", "depth") if c in per_unit.coords])
        per_unit = per_unit.compute()  # grouping needs the labels in memory
        grouped = per_unit.groupby("group")
        out = getattr(grouped, reduce)()
        out["n_channels"] = per_unit["group"].groupby("group").count()
        return out

    def to_dataframe(self):
        """A `pandas.DataFrame`, one row per channel indexed by (layer, channel), one column per per-channel
        variable; values in each variable's units (its `units` attr in the dataset; the frame keeps no attrs)."""
        cols = [v for v in self._ds.data_vars if self._ds[v].dims == ("unit",)]
        df = self._ds[cols].to_dataframe()
        return df.reset_index().set_index(["layer", "channel"]).drop(columns=["unit"], errors="ignore")
