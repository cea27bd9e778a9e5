"""The adapter registry: layout from a checkout and from a wheel, failed adapters, keyword and value checks."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from torch import nn

import chanaxis
from chanaxis import registry
from chanaxis.errors import ChanaxisError

REPO = Path(__file__).resolve().parent.parent
LOAD = "import chanaxis; m = chanaxis.load_model('test_resnet', num_classes=10, image_size=32); print(m.num_classes)"
# what the source tree of a wheel or a checkout needs (no build outputs, no metadata)
SOURCE = ("chanaxis", "adapters", "cli", "data_cards", "pyproject.toml", "README.md")


def env():
    e = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    e.setdefault("OMP_NUM_THREADS", "2")
    return e


def run(args, cwd, timeout=180):
    p = subprocess.run([sys.executable, *args], cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


def copy_source(dest: Path) -> Path:
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCE:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(autouse=True)
def fresh_registry():
    registry.refresh()
    yield
    registry.refresh()


# ------------------------------------------------------------------------------------------------------- layout

def test_load_from_repository_root():
    """sys.path[0] is the repository root: ./chanaxis/ is imported, the subpackages still resolve."""
    assert run(["-c", LOAD], cwd=REPO).split()[-1] == "10"


@pytest.fixture(scope="module")
def bare_site(tmp_path_factory):
    """The venv's site-packages without chanaxis (no editable finder, no metadata, so no entry points)."""
    site_dir = Path(sysconfig.get_paths()["purelib"])
    out = tmp_path_factory.mktemp("site")
    for entry in site_dir.iterdir():
        if not entry.name.lower().startswith(("chanaxis", "__editable__")):
            (out / entry.name).symlink_to(entry)
    return out


def test_bare_checkout(tmp_path, bare_site):
    """A checkout that was never installed: layout.extend_path maps the subpackages, the built-in adapters are used."""
    src = copy_source(tmp_path / "checkout")
    script = f"""
import importlib.metadata, importlib.util, json, site, sys
site.addsitedir({str(bare_site)!r})
import chanaxis
wired = importlib.util.find_spec("chanaxis.cli") is not None  # right after `import chanaxis`
eps = [ep.name for ep in importlib.metadata.entry_points(group="chanaxis.adapters")]
{LOAD.split("; ", 1)[1]}
import chanaxis.cli.main, importlib.resources
from chanaxis import registry
print(json.dumps({{"wired": wired, "eps": eps, "chanaxis": chanaxis.__file__,
                   "adapters_pkg": sys.modules["chanaxis.adapters"].__file__, "adapters": sorted(registry.adapters()),
                   "failed": registry.failed(), "num_classes": m.num_classes,
                   "cards": sorted(f.name for f in importlib.resources.files("chanaxis.data_cards").iterdir())}}))
"""
    got = json.loads(run(["-S", "-c", script], cwd=src).splitlines()[-1])
    assert got["eps"] == []  # nothing installed: the fallback to BUILTIN_ADAPTERS was exercised
    assert got["chanaxis"] == str(src / "chanaxis" / "__init__.py")
    assert got["adapters_pkg"] == str(src / "adapters" / "__init__.py")
    assert got["adapters"] == ["onnx", "timm", "torch"] and got["failed"] == {}
    assert got["num_classes"] == 10
    assert "cifar10.toml" in got["cards"]
    # `import chanaxis.cli` right after `import chanaxis` needs chanaxis/__init__.py to call layout.extend_path()
    assert got["wired"] or "extend_path" not in (REPO / "chanaxis" / "__init__.py").read_text()


def test_second_checkout_uses_its_own_folders(tmp_path):
    """Run from another checkout while the venv has an editable install of this one: no mixing of the two trees."""
    src = copy_source(tmp_path / "other")
    script = (f"{LOAD}; import sys, chanaxis.cli.main; "
              "print(*(sys.modules[n].__file__ for n in ('chanaxis', 'chanaxis.adapters', 'chanaxis.cli')))")
    out = run(["-c", script], cwd=src).split("\n")
    assert out[0] == "10"
    assert out[1].split() == [str(src / "chanaxis" / "__init__.py"), str(src / "adapters" / "__init__.py"),
                              str(src / "cli" / "__init__.py")]


def test_wheel_install(tmp_path):
    """pip install --target (a wheel built from the tree), imported from elsewhere: the wheel's own subpackages."""
    src = copy_source(tmp_path / "src")
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--no-compile", "--target", str(target), str(src)], env=env(), capture_output=True, timeout=300)
    assert r.returncode == 0, f"building the wheel failed: {r.stderr.decode()[-1000:]}"
    script = (f"import sys; sys.path.insert(0, {str(target)!r}); {LOAD}; import chanaxis.layout as L; "
              "print(chanaxis.__file__, sys.modules['chanaxis.adapters'].__file__, L.extend_path())")
    out = run(["-c", script], cwd=tmp_path).split("\n")
    assert out[0] == "10"
    assert out[1].split(" ", 2) == [str(target / "chanaxis" / "__init__.py"),
                                    str(target / "chanaxis" / "adapters" / "__init__.py"), "{}"]


def test_extend_path_is_idempotent():
    # under an editable install or a wheel, their finders map the subpackages already and nothing is added
    first = chanaxis.layout.extend_path()
    assert chanaxis.layout.extend_path() == first
    assert all(importlib.util.find_spec(name) is not None for name in chanaxis.layout.SUBPACKAGES)


# ------------------------------------------------------------------------------------------------ entry points

def test_no_entry_points_fall_back_to_builtins(monkeypatch):
    monkeypatch.setattr(registry, "entry_points", lambda group: [])
    assert sorted(registry.adapters()) == ["onnx", "timm", "torch"]
    assert registry.failed() == {}


def test_failed_adapter_is_reported(monkeypatch, tmp_path):
    (tmp_path / "chanaxis_test_fake_onnx.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'onnxruntime'\", name='onnxruntime')\n")
    (tmp_path / "chanaxis_test_odd.py").write_text("class Adapter:\n    def __init__(self):\n        1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [EntryPoint(name="onnx", value="chanaxis_test_fake_onnx:OnnxAdapter", group=registry.GROUP),
           EntryPoint(name="gone", value="chanaxis_test_no_such_module:Adapter", group=registry.GROUP),
           EntryPoint(name="odd", value="chanaxis_test_odd:Adapter", group=registry.GROUP)]
    monkeypatch.setattr(registry, "entry_points", lambda group: eps)
    assert sorted(registry.adapters()) == ["timm", "torch"]  # quiet in the listing
    assert registry.failed() == {"onnx": "No module named 'onnxruntime'",
                                 "gone": "No module named 'chanaxis_test_no_such_module'",
                                 "odd": "ZeroDivisionError: division by zero"}
    with pytest.raises(ChanaxisError) as e:
        chanaxis.load_model(str(tmp_path / "m.onnx"))
    msg = str(e.value)
    assert "\n" not in msg
    assert "the 'onnx' adapter failed to load (No module named 'onnxruntime'): install onnxruntime: " \
           "pip install 'chanaxis[cpu]'" in msg
    assert "the 'gone' adapter failed to load (No module named 'chanaxis_test_no_such_module'): install the " \
           "package that provides the 'chanaxis_test_no_such_module' module" in msg
    assert "the 'odd' adapter failed to load (ZeroDivisionError: division by zero)" in msg
    # what the remaining adapters open still opens
    assert chanaxis.load_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), image_size=8).graph.names == ["0"]


# --------------------------------------------------------------------------------------- keywords and values

def test_open_signatures_are_explicit_and_take_what_callers_pass():
    # chanaxis' own callers (cli, analyze, training, reload, trajectory) pass these to whichever adapter opens
    common = {"num_classes", "image_size", "pretrained", "checkpoint", "init_seed", "device"}
    for name, adapter in registry.adapters().items():
        options = registry.open_options(adapter)
        assert options is not None, f"the {name} adapter's open takes **kwargs"
        assert common <= set(options), (name, common - set(options))


def test_unknown_keyword_names_the_nearest(tmp_path):
    with pytest.raises(ChanaxisError, match=r"unknown option 'num_clases' for the timm adapter; did you mean "
                                            r"'num_classes'\? valid: num_classes, image_size, "):
        chanaxis.load_model("test_resnet", num_clases=10)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    with pytest.raises(ChanaxisError, match="unknown option 'imagesize' for the torch adapter; did you mean "
                                            "'image_size'"):
        chanaxis.load_model(net, imagesize=16)
    with pytest.raises(ChanaxisError, match="unknown option 'num_clases' for the onnx adapter; did you mean "
                                            "'num_classes'"):
        chanaxis.load_model(str(tmp_path / "m.onnx"), num_clases=10)  # checked before the file is read
    with pytest.raises(ChanaxisError, match=r"unknown option 'zzz' for the timm adapter; valid: ") as e:
        chanaxis.load_model("test_resnet", zzz=1)
    assert "did you mean" not in str(e.value)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_num_classes_must_be_positive(bad):
    with pytest.raises(ChanaxisError, match=r"num_classes \(--num-classes\) must be a whole number of at least 1"):
        chanaxis.load_model("test_resnet", num_classes=bad, image_size=32)


def test_image_size_minimum():
    with pytest.raises(ChanaxisError, match="at least 8 for the timm adapter, got 4"):
        chanaxis.load_model("test_resnet", num_classes=10, image_size=4)
    with pytest.raises(ChanaxisError, match="whole number of pixels, at least 8 for the timm adapter, got 32.0"):
        chanaxis.load_model("test_resnet", num_classes=10, image_size=32.0)
    with pytest.raises(ChanaxisError, match="at least 1 for the torch adapter, got 0"):
        chanaxis.load_model(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten()), image_size=0)
    # a model that downsamples more than the floor allows names its own smallest size, in one line
    with pytest.raises(ChanaxisError, match=r"'test_convnext' cannot take 8×8 images.*smallest image it takes is "
                                            r"32 px") as e:
        chanaxis.load_model("test_convnext", num_classes=10, image_size=8)
    assert "\n" not in str(e.value)
    assert chanaxis.load_model("test_resnet", num_classes=10, image_size=8).input_size == (3, 8, 8)


def test_torch_adapter_takes_the_common_keywords():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    m = chanaxis.load_model(net, image_size=16, init_seed=5, pretrained=False, device="cpu")
    assert m.num_classes == 3
    with pytest.raises(ChanaxisError, match="own weights"):
        chanaxis.load_model(net, image_size=16, pretrained=True)
