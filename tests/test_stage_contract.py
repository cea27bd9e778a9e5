"""The stage contract's own pieces: parameters (validation, unknown keywords, presets), the registry and its order,
the generated command-line options, and ARCHITECTURE.md's example of adding a stage, run as written."""
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import chanaxis
from chanaxis import stage as S
from chanaxis.errors import ChanaxisError
from chanaxis.params import Params, param

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ToyParams(Params):
    n: int = param(3, "how many", "images", ge=1)
    rate: float = param(0.5, "a rate", "fraction", gt=0, le=1)
    mode: str = param("a", "a mode", choices=("a", "b"))
    levels: tuple[float, ...] = param((0.1, 0.2), "levels", "fraction")
    limit: int | None = param(None, "a limit", none="no limit")
    flag: bool = param(False, "a switch")


def test_params_coerce_validate_and_refuse():
    p = ToyParams.make(n="4", levels="0.3,0.4", flag="true")
    assert (p.n, p.levels, p.flag) == (4, (0.3, 0.4), True)
    for bad, match in (({"n": 0}, "n .--n. must be ≥ 1 images, not 0"), ({"rate": 0}, "must be > 0"),
                       ({"mode": "c"}, "one of a, b"), ({"n": 1.5}, "whole number"), ({"levels": ()}, "at least"),
                       ({"nn": 2}, "did you mean 'n'"), ({"flag": "maybe"}, "true or false")):
        with pytest.raises(ChanaxisError, match=match):
            ToyParams.make(**bad)
    with pytest.raises(TypeError):
        param([1], "mutable defaults are refused")


def test_every_stage_has_presets_of_its_own_params_and_help():
    for name, cls in S.stages().items():
        assert issubclass(cls.Params, Params) and cls.help, name
        for preset in ("quick", "paper"):
            assert isinstance(cls.preset(preset), cls.Params), (name, preset)
        for d in cls.Params.describe():
            assert d["help"], (name, d["name"])


def test_order_and_unknown_stage():
    assert S.order(["report", "capture", "metrics"]) == ["capture", "metrics", "report"]
    with pytest.raises(ChanaxisError, match="did you mean 'lesion'"):
        S.get("lesions")


def test_public_api_shows_the_parameters():
    import inspect
    for fn, field in ((chanaxis.prune, "levels"), (chanaxis.capture, "n_calibration"), (chanaxis.lesion, "fraction"),
                      (chanaxis.metrics, "n_null"), (chanaxis.train, "epochs"), (chanaxis.trajectory, "n_calibration")):
        assert field in inspect.signature(fn).parameters, fn.__name__
        assert field in (fn.__doc__ or ""), fn.__name__


def test_cli_options_come_from_the_parameters():
    r = subprocess.run([sys.executable, "-m", "chanaxis.cli.main", "lesion", "--help"], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "--fraction" in text and "(default: 0.2)" in text and "[fraction]" in text
    r = subprocess.run([sys.executable, "-m", "chanaxis.cli.main", "capture", "test_resnet", "-d", "synthetic",
                        "--out", "/nonexistent/x.zarr", "--n-calibration", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and "n_calibration (--n-calibration) must be ≥ 2" in r.stderr
    assert "Traceback" not in r.stderr


def test_the_documented_example_stage_runs(tmp_path, monkeypatch, tiny_resnet):
    code = re.search(r"```python\n(.*?)```", (ROOT / "ARCHITECTURE.md").read_text(), re.S).group(1)
    assert len(code.strip().splitlines()) <= 30
    (tmp_path / "mystage.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(S.BUILTIN, "sparsity", "mystage:SparsityStage")
    assert S.order().index("sparsity") > S.order().index("capture")
    run = chanaxis.capture(tiny_resnet, "synthetic", tmp_path / "r.zarr", n_calibration=16, progress=False)
    from chanaxis.study import study_params
    params = study_params("quick", {"sparsity": {"threshold": "0.1"}})["sparsity"]
    S.run_stage(S.get("sparsity")(params), run, S.Context(progress=False))
    tree = chanaxis.open_run(run)
    layer = tiny_resnet.graph.names[0]
    share = tree[f"sparsity/{layer}"]["silent"].values
    y = tree[f"layers/{layer}"]["local"].values
    np.testing.assert_allclose(share, (y <= 0.1).mean(0))
    assert tree.attrs["status"]["sparsity"] == "done"
