"""The run store: one zarr v3 group per run, opened as a lazy xarray.DataTree.

Layout (DESIGN.md): `/` attrs (provenance, config, stage status), `/samples`, `/layers/<layer>`, `/graph`, and one
node per later stage. Stage status lives in the root attrs as {stage: "running" | "done"}; a stage is only marked
done after everything it writes is on disk, so a killed stage is never reported as finished.

Conventions for other readers (plain xarray, zarr): every variable and coordinate the store's writers make carries
CF `long_name` and `units` (`chanaxis.conventions`, applied here in `write_dataset`, `new_array`, `new_arrays`), and
the root holds zarr v3 consolidated metadata whenever the store is at rest: written when a stage is marked done
(`set_status`) or provenance is recorded, and dropped by the next write of the root attrs (a stage marked running
rewrites them through a live handle, which has none), so a consolidated view is never stale. chanaxis itself always
reads the live metadata (`use_consolidated=False`, `consolidated=False`).
"""
from __future__ import annotations

import asyncio
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
import zarr.api.asynchronous
import zarr.core.buffer
import zarr.core.sync
import zarr.storage

from .version import __version__
from . import conventions, safety
from .errors import ChanaxisError
from .locations import is_url, location


def jsonable(obj):
    """`obj` as plain JSON types (numpy arrays and scalars to lists and numbers), the form attrs are stored in."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def create_or_resume(path: str | Path, config: dict[str, Any], overwrite: bool = False) -> zarr.Group:
    """Open `path` for writing a run made with `config`: resume a chanaxis store of the same config, create one
    where nothing (or an empty folder) is; refuse a store of another config unless `overwrite`, and refuse anything
    chanaxis did not make, whatever `overwrite` says (`chanaxis.safety`: it deletes only its own stores). `path` is a
    folder or any fsspec URL (`s3://bucket/run.zarr`)."""
    path = location(path)
    config = jsonable(config)
    if path.exists() and not path.is_dir():
        raise ChanaxisError(f"'{path}' is a file, not a folder; give --out a path for a new run store (RUN.zarr)")
    if path.is_dir() and any(path.iterdir()):
        why = safety.protected(path)
        if why:
            raise ChanaxisError(f"'{path}' cannot be a run store: {why}; give --out a folder of its own "
                                f"(e.g. {path / 'run.zarr'})")
        if not safety.is_chanaxis_store(path):
            found = ", ".join(sorted(p.name for p in path.iterdir())[:4])
            raise ChanaxisError(f"'{path}' exists and is not a chanaxis run store (it holds {found}); chanaxis "
                                "never replaces what it did not make: choose another --out")
        root = zarr.open_group(str(path), mode="r+", use_consolidated=False)
        old = root.attrs.get("config")
        if old == config:
            return root
        if not overwrite:
            diff = config_diff(old or {}, config)
            raise ChanaxisError(f"'{path}' holds a run made with another config (differs in: {', '.join(diff)}); "
                                "use another --out, the same options, or --overwrite to replace it")
        safety.remove_store(path)
    try:
        if not is_url(path):
            path.parent.mkdir(parents=True, exist_ok=True)
        # the root's attributes go out with the group itself: a store is never left without its chanaxis mark
        root = zarr.create_group(store=str(path), overwrite=True, attributes={
            "made_by": safety.MARK, "chanaxis_version": __version__, "config": config, "status": {}})
    except OSError as e:
        raise ChanaxisError(f"cannot write the run store at '{path}' ({e.strerror}); choose a writable --out") from None
    return root


def config_diff(old: dict, new: dict) -> list[str]:
    """Keys whose values differ between two configs (compared in their stored JSON form)."""
    old, new = jsonable(old), jsonable(new)
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def check_stage_config(grp: zarr.Group, stage: str, config: dict, overwrite: bool, command: str,
                       node: str | None = None, clear: tuple[str, ...] = ()) -> None:
    """Results made with other parameters are refused, or with `overwrite` removed — the stage's nodes (`node` and
    `clear`) and its status together, so a rerun starts the stage afresh — and never mixed with new ones. The
    old parameters are what `stage_config(grp, stage, node)` holds."""
    old = stage_config(grp, stage, node)
    if old is None or not config_diff(old, config):
        return
    if not overwrite:
        raise ChanaxisError(f"the {stage} results in the store were made with other parameters (differs in: "
                            f"{', '.join(config_diff(old, config))}); rerun with the same options or pass "
                            f"--overwrite to redo `chanaxis {command}`")
    for n in ((node,) if node else ()) + tuple(clear):
        if n in grp:
            del grp[n]
    status = dict(grp.attrs.get("status", {}))
    status.pop(stage, None)
    grp.attrs["status"] = status


def run_config(run) -> dict:
    """The config the run store was created with (model, dataset, calibration, capture parameters)."""
    grp = run if isinstance(run, zarr.Group) else open_group(run)
    return dict(grp.attrs.get("config", {}))


def stage_config(grp: zarr.Group, stage: str, node: str | None = None) -> dict | None:
    """The parameters a stage recorded: on its node's attrs (`node`), else in the root attrs as `<stage>_config`."""
    if node is not None:
        return grp[node].attrs.get("config") if node in grp else None
    return grp.attrs.get(f"{stage}_config")


def set_stage_config(grp: zarr.Group, stage: str, config: dict, node: str | None = None) -> None:
    target = grp[node] if node is not None else grp
    target.attrs.update({"config" if node is not None else f"{stage}_config": jsonable(config)})


def set_provenance(grp: zarr.Group, **attrs) -> None:
    """Record study-level provenance (the preset and its parameters) in the root attrs, in one write; the store's
    consolidated metadata is written again unless a stage is running."""
    grp.update_attributes(jsonable(attrs))
    if "running" not in dict(grp.attrs.get("status", {})).values():
        consolidate(grp)


def stage_state(run, stage: str) -> str | None:
    """'running', 'done' or None: what the store records of `stage` (`run` a path or an open group)."""
    grp = run if isinstance(run, zarr.Group) else open_group(run)
    return dict(grp.attrs.get("status", {})).get(stage)


def set_status(root: zarr.Group, stage: str, state: str) -> None:
    """Record `stage` as "running" or "done" in the root attrs. "done" also writes the store's consolidated
    metadata (`consolidate`): after every finished stage plain xarray opens the store, new nodes included. Writing
    "running" rewrites the root's metadata through `root`, a live handle (`open_group`), which drops any
    consolidated metadata: while a stage writes, readers see the live store, never a stale summary of it."""
    status = dict(root.attrs.get("status", {}))
    status[stage] = state
    root.attrs["status"] = status
    if state == "done":
        consolidate(root)


def consolidate(run) -> None:
    """Write zarr v3 consolidated metadata at the root of the store `run` (a path, URL or open group): every node's
    metadata in the root `zarr.json`, what `xarray.open_zarr`/`open_datatree` read first. Works on any store zarr
    writes to (local folders, fsspec URLs such as s3://)."""
    grp = run if isinstance(run, zarr.Group) else open_group(run, mode="r+")
    if not grp.store.supports_consolidated_metadata:
        return  # readers read the live metadata there, as while a stage runs
    with warnings.catch_warnings():  # zarr says consolidated metadata is not in the v3 spec yet; xarray reads it
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        zarr.consolidate_metadata(grp.store, path=grp.path or None)


def drop_consolidated(root: zarr.Group) -> None:
    """Remove the consolidated metadata from the root `zarr.json` of the store of `root`, if it has any (before a
    write that adds or replaces nodes outside a running stage, so no reader sees a stale summary meanwhile)."""
    key = f"{root.path}/zarr.json" if root.path else "zarr.json"
    buf = zarr.core.sync.sync(root.store.get(key, zarr.core.buffer.default_buffer_prototype()))
    if buf is not None and json.loads(buf.to_bytes()).get("consolidated_metadata") is not None:
        # the live metadata written back as it is: without the summary (zarr's own writer, zarr's own bytes)
        zarr.open_group(store=root.store, path=root.path, mode="r+", use_consolidated=False).update_attributes({})


def status(path: str | Path) -> dict[str, str]:
    return dict(open_group(path).attrs.get("status", {}))


def open_group(path: str | Path, mode: str = "r") -> zarr.Group:
    path = location(path)
    if not path.exists():
        raise ChanaxisError(f"no run store at '{path}'; create one with `chanaxis capture MODEL --dataset D --out {path}`")
    try:
        # the live metadata, never the consolidated summary: a stage adds and replaces nodes while it runs
        return zarr.open_group(str(path), mode=mode, use_consolidated=False)
    except Exception:  # noqa: BLE001
        raise ChanaxisError(f"'{path}' is not a chanaxis run store (no zarr group there)") from None


def open_run(path: str | Path) -> xr.DataTree:
    """The whole store as a lazy DataTree (dask arrays, nothing read until computed)."""
    open_group(path)
    tree = xr.open_datatree(str(path), engine="zarr", consolidated=False, chunks={})
    # coordinates are small (one value per channel, image or sample): in memory they can index and select
    # (`m.where(m.layer == name, drop=True)`), while the data variables stay lazy
    for node in tree.subtree:
        ds = node.to_dataset(inherit=False)
        if ds.coords:
            node.dataset = ds.assign_coords({k: v.load() for k, v in ds.coords.items()})
    return tree


def read_dataset(run, node: str) -> xr.Dataset:
    """One small node of the store, read whole into memory (the counterpart of `write_dataset`)."""
    return xr.open_zarr(str(run), group=node, consolidated=False, zarr_format=3, chunks=None).load()


def write_dataset(root: zarr.Group, node: str, ds: xr.Dataset) -> None:
    """Write a small, fully computed dataset as one node (replacing it).

    xarray writes a dataset's arrays one after another, each file a round trip (a few ms on disk, tens of ms on an
    object store, for a metrics node of a few hundred arrays), so the node is written by xarray into a MemoryStore
    and its keys are then copied to the store concurrently: the bytes are xarray's own. Every variable and
    coordinate gets its `long_name` and `units` (`chanaxis.conventions`).

    A node written outside a running stage (the store at rest) first drops the root's consolidated metadata, so no
    reader sees a summary without it; whoever writes it then consolidates (`consolidate`, or a stage's "done")."""
    if not root.path:
        drop_consolidated(root)
    if node in root:
        del root[node]
    # variable-length strings: zarr v3 has a spec for them, not for numpy's fixed-width unicode
    ds = conventions.annotate(node, ds.copy())
    for k in list(ds.variables):
        if ds[k].dtype.kind == "U":
            ds[k] = ds[k].astype(object)
    parent = node.rpartition("/")[0]
    if parent:
        root.require_group(parent)
    mem = zarr.storage.MemoryStore()
    ds.to_zarr(mem, mode="w", consolidated=False, zarr_format=3)
    prefix = f"{root.path}/{node}" if root.path else node
    zarr.core.sync.sync(_copy_keys(mem, root.store, prefix, skip=()))


async def _copy_keys(src, dst, prefix: str, skip=("zarr.json",)) -> None:
    """Copy every key of the store `src` (but `skip`) to `dst` under `prefix`, all at once."""
    proto = zarr.core.buffer.default_buffer_prototype()
    keys = [k async for k in src.list() if k not in skip]

    async def copy(k):
        await dst.set(f"{prefix}/{k}" if prefix else k, await src.get(k, proto))
    await asyncio.gather(*(copy(k) for k in keys))


def _array_kwargs(shape, dims, dtype, chunks=None, attrs=None, compress=False, fill_value=None, path="") -> dict:
    """zarr's `create_array` arguments; `path` (the array's path in the store) names its CF attributes."""
    node, _, name = path.strip("/").rpartition("/")
    return dict(shape=tuple(shape), chunks=tuple(chunks or shape), dtype=dtype, dimension_names=list(dims),
                compressors="auto" if compress else None,
                fill_value=fill_value if fill_value is not None else "" if dtype is str else 0,
                attributes=conventions.attrs(node, name, attrs), overwrite=True)


def new_array(group: zarr.Group, name: str, shape, dims, dtype, chunks=None, attrs=None, compress=False,
              fill_value=None):
    """A new array (replacing one of that name); `fill_value` is what an unwritten chunk reads as (default 0 or
    ""), so an array filled by many units needs no writes up front."""
    return group.create_array(name, **_array_kwargs(shape, dims, dtype, chunks, attrs, compress, fill_value,
                                                    path=f"{group.path}/{name}"))


def new_arrays(group: zarr.Group, groups: dict[str, dict] | None = None, arrays: list[dict] | None = None) -> None:
    """Create many subgroups (name → attrs) and arrays (dicts of `new_array`'s arguments plus an optional `data`)
    under `group` at once.

    zarr-python makes every file operation of every array a round trip through its I/O thread (~3 ms per array
    here, a second or more for a capture's few hundred small arrays), so the hierarchy is built by zarr in a
    MemoryStore and its keys are then written to the real store concurrently: the bytes are zarr's own.
    """
    mem = zarr.storage.MemoryStore()

    async def build():
        ag = await zarr.api.asynchronous.open_group(store=mem, mode="w")
        by_depth: dict[int, list] = {}
        for name, attrs in (groups or {}).items():
            by_depth.setdefault(name.count("/"), []).append((name, attrs))
        for depth in sorted(by_depth):  # parents first
            await asyncio.gather(*(ag.create_group(name, attributes=jsonable(attrs), overwrite=True)
                                   for name, attrs in by_depth[depth]))

        async def one(spec):
            spec = dict(spec)
            name, data = spec.pop("name"), spec.pop("data", None)
            arr = await ag.create_array(name, **_array_kwargs(**spec, path=f"{group.path}/{name}"))
            if data is not None:
                await arr.setitem(Ellipsis, data)
        await asyncio.gather(*(one(spec) for spec in arrays or ()))

    zarr.core.sync.sync(build())
    # the root is `group` itself, already in the store
    zarr.core.sync.sync(_copy_keys(mem, group.store, group.path, skip=("zarr.json",)))


def write_many(items) -> None:
    """Write (zarr.Array, selection, value) triples concurrently: one round trip through zarr's I/O thread."""
    async def run():
        await asyncio.gather(*(a.async_array.setitem(sel, v) for a, sel, v in items))
    zarr.core.sync.sync(run())


def ensure_writable(path: str | Path) -> None:
    if is_url(path):
        return  # an object store says so at the first write, with its own reason
    parent = Path(path).resolve().parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise ChanaxisError(f"cannot write the run store at '{path}': '{probe}' is not writable; choose another --out")


# node paths: the store's layout in one place (DESIGN.md's table); stages never build these strings themselves
SAMPLES, GRAPH, METRICS, STRUCTURE, LESION, PRUNING, TRAJECTORY = ("samples", "graph", "metrics", "structure",
                                                                   "lesion", "pruning", "trajectory")
METRICS_PARTS = "metrics_parts"


def layer_node(name: str) -> str:
    return f"layers/{name}"


def layer_array(name: str, array: str) -> str:
    """`local`, `gap`, `weight`, `group`, `image_of_sample`, `position` or `channel` of a layer."""
    return f"layers/{name}/{array}"


def samples_array(name: str) -> str:
    return f"samples/{name}"


def metrics_part(layer: str) -> str:
    return f"{METRICS_PARTS}/{layer}"


def geometry_part(batch: int | None = None) -> str:
    """The metrics stage's gradient-geometry sums over one batch of calibration images (`batch` None: their parent,
    whose attrs record whether the pass runs and why not)."""
    return f"{METRICS_PARTS}/geometry" + ("" if batch is None else f"/{batch}")


def to_numpy(a) -> np.ndarray:
    return np.asarray(a[...])
