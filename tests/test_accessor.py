"""The ds.chanaxis accessor, as the README uses it."""
import numpy as np
import pytest

import chanaxis
from chanaxis.errors import ChanaxisError


@pytest.fixture(scope="module")
def m(tmp_path_factory, tiny_resnet):
    run = chanaxis.capture(tiny_resnet, "synthetic", tmp_path_factory.mktemp("acc") / "r.zarr", n_calibration=48,
                           progress=False)
    chanaxis.metrics(run, only=["local", "target"], progress=False)
    return chanaxis.open_run(run)["metrics"].to_dataset()


def test_top(m):
    top = m.chanaxis.top(5, by="hull_score")
    vals = top["hull_score"].values
    assert len(vals) == 5 and (np.diff(vals) <= 0).all()
    assert vals[0] == pytest.approx(np.nanmax(m["hull_score"].values))
    low = m.chanaxis.top(3, by="task_info", ascending=True, layer="layer2.0.conv1")
    assert set(low.layer.values) == {"layer2.0.conv1"}


def test_layer_selection_matches_where(m):
    a = m.chanaxis.layer("layer3.0.conv2")
    b = m.where(m.layer == "layer3.0.conv2", drop=True)
    np.testing.assert_array_equal(a["task_info"].values, b["task_info"].values)
    assert a.sizes["unit"] == 48  # test_resnet's layer3.0.conv2 has 48 channels
    assert m.chanaxis.layers()[0] == "conv1.0"
    with pytest.raises(ChanaxisError, match="did you mean"):
        m.chanaxis.layer("layer3.0.cnv2")


def test_by_group_and_dataframe(m):
    g = m.chanaxis.by_group()
    assert int(g["n_channels"].sum()) == m.sizes["unit"]
    assert g.sizes["group"] == len(np.unique(m["group"].values))
    df = m.chanaxis.to_dataframe()
    assert len(df) == m.sizes["unit"] and df.index.names == ["layer", "channel"]
    assert df.loc[("conv1.0", 3), "input_capture"] == pytest.approx(
        float(m["input_capture"].values[(m.layer.values == "conv1.0") & (m.channel.values == 3)][0]))
