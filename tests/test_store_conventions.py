"""The run store speaks xarray's and CF's conventions: plain xarray (`open_datatree`, `open_zarr` of every node)
opens every store a study writes without a single warning (zarr v3 consolidated metadata at the root, valid after
every stage), and every variable and coordinate of every node carries `long_name` and `units`
(`chanaxis.conventions`). The consolidated metadata stays true to the store when a stage runs again and adds nodes,
and is never stale while a stage writes."""
from __future__ import annotations

import json
import shutil
import warnings
from fnmatch import fnmatchcase

import numpy as np
import pytest
import xarray as xr
import zarr

import chanaxis
from chanaxis import conventions, store
from chanaxis import stage as S


@pytest.fixture(scope="module")
def study(tiny_study):
    """The tiny study of every stage (conftest; shared with test_analyze)."""
    return tiny_study[0]


def _stores(out):
    """Every zarr store a study writes: the run store, the trajectory's and each checkpoint's."""
    found = [out / "run.zarr", out / "trajectory.zarr"] + sorted((out / "trajectory").glob("epoch_*.zarr"))
    assert all((p / "zarr.json").is_file() for p in found)
    return found


def _live_nodes(path) -> set[str]:
    """The store's groups as they are on disk (not the consolidated summary)."""
    def walk(g, prefix):
        out = set()
        for k, sub in g.groups():
            out |= {prefix + k} | walk(sub, prefix + k + "/")
        return out
    return walk(zarr.open_group(str(path), mode="r", use_consolidated=False), "")


def _consolidated(path) -> dict | None:
    return json.loads((path / "zarr.json").read_text()).get("consolidated_metadata")


def _check_plain(path) -> list[str]:
    """Open `path` with plain xarray (warnings are errors); the variables and coordinates lacking long_name/units."""
    bad = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tree = xr.open_datatree(str(path), engine="zarr")
        nodes = {n.path.strip("/") for n in tree.subtree} - {""}
        assert nodes == _live_nodes(path), f"{path}: the consolidated view differs from the store"
        for node in [""] + sorted(nodes):
            ds = xr.open_zarr(str(path), group=node or None)
            bad += [f"{path.name}:/{node}/{k}" for k in conventions.missing(node, ds)]
            bad += [f"{path.name}:/{node}/{k} (tree)" for k in conventions.missing(node, tree[node or "/"].dataset)]
    return bad


def test_plain_xarray_reads_every_node_without_warnings_and_cf_attrs(study):
    bad = []
    for path in _stores(study):
        assert _consolidated(path), f"{path} has no consolidated metadata"
        bad += _check_plain(path)
    assert not bad, "without long_name/units: " + ", ".join(bad[:20])


def test_estimates_name_their_method_section(study):
    tree = chanaxis.open_run(study / "run.zarr")
    for node, var, section in (("metrics", "input_capture", "§2"), ("metrics", "task_info", "§3"),
                               ("structure", "ari", "§4"), ("lesion", "damage_loss", "§6"),
                               ("pruning", "auc", "§7"), ("trajectory", "coupling_ix_it", "§5")):
        a = tree[node][var].attrs
        assert section in a["method_section"] and a["long_name"] and a["units"], (node, var)
    assert tree["lesion/predictors"]["spearman"].attrs["units"] == "1"
    assert tree["trajectory"]["coupling_ix_it"].attrs["units"] == "1"  # "Spearman rho" is a long_name, not a unit
    assert tree["pruning"]["macs_retained"].attrs["units"] == "MACs"
    assert tree["lesion"]["damage_loss"].attrs["description"]  # the writer's own attrs stay beside them


def test_rerun_adding_nodes_keeps_consolidated_metadata_true(study, tmp_path, monkeypatch):
    """Nodes removed by hand, the metrics stage run again with its recorded parameters: it writes them anew, and
    the consolidated view plain xarray reads has them; while the stage ran, the store had no (stale) summary."""
    run = tmp_path / "run.zarr"
    shutil.copytree(study / "run.zarr", run)
    grp = zarr.open_group(str(run), mode="r+", use_consolidated=False)
    params = store.stage_config(grp, "metrics")
    for node in ("structure", "metrics", "metrics_parts/layer1.0.conv1"):
        del grp[node]
    seen = []
    cls = S.get("metrics")
    real = cls.finish

    def spy(self, r, ctx):
        seen.append(_consolidated(run))
        return real(self, r, ctx)
    monkeypatch.setattr(cls, "finish", spy)
    chanaxis.metrics(run, progress=False, **params)
    assert seen == [None]  # while the stage wrote: no summary to go stale
    assert {"structure", "metrics", "metrics_parts/layer1.0.conv1"} <= set(_consolidated(run)["metadata"])
    assert not _check_plain(run)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = xr.open_zarr(str(run), group="metrics")
    assert m["input_capture"].attrs["units"] == "nats" and m.sizes["unit"] > 0
    assert chanaxis.open_run(run)["metrics"]["input_capture"].shape == m["input_capture"].shape


def test_store_helpers_consolidate_when_done_and_drop_when_running(tmp_path):
    """The mechanism on a bare store: "done" consolidates, "running" drops it, chanaxis reads the live store."""
    path = tmp_path / "r.zarr"
    root = store.create_or_resume(path, {"x": 1})
    store.write_dataset(root, "a", xr.Dataset({"damage_loss": ("unit", np.arange(3.0))}))
    store.set_status(root, "s1", "done")
    assert set(_consolidated(path)["metadata"]) == {"a", "a/damage_loss"}
    store.set_status(root, "s2", "running")
    assert _consolidated(path) is None
    store.write_dataset(root, "b", xr.Dataset({"auc": ("method", [1.0])}, coords={"method": ["hull"]}))
    assert "b" in store.open_group(path)  # live, whatever the summary says
    store.set_status(root, "s2", "done")
    assert {"a", "b"} <= set(_consolidated(path)["metadata"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = xr.open_zarr(str(path), group="b")
    assert b["auc"].attrs["units"] == "%" and b["method"].attrs["long_name"]
    # a node replaced at rest: the summary goes first, so it never lists what is no longer there
    store.write_dataset(store.open_group(path, mode="r+"), "b", xr.Dataset({"loss": ("method", [2.0])}))
    assert _consolidated(path) is None
    store.consolidate(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(xr.open_zarr(str(path), group="b").data_vars) == ["loss"]


def test_declared_outputs_agree_with_the_table():
    """Each stage's promised units (checked on real stores by test_conformance) are the table's."""
    for name, cls in S.stages().items():
        for pattern, variables in cls.outputs.items():
            node = pattern.replace("*", "x")
            for var, (_, units) in variables.items():
                conv = conventions.lookup(node, var)
                assert conv is not None and conv.units == units, (name, pattern, var, conv, units)


def test_table_is_well_formed():
    for name, conv in conventions.NAMES.items():
        assert conv.long_name and conv.units, name
        assert conv.units not in ("Spearman rho", "R^2", "|cos|", "fraction", "channels"), name
        assert conv.section is None or conv.section in conventions.SECTIONS.values(), name
    assert any(fnmatchcase("metrics_parts/geometry/3", p) for p in conventions.NODES)
