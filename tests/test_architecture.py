"""The room rules: import-linter's contracts (pyproject.toml) on the package as installed, and no private name used
outside its module."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the installed layout: pyproject's package-dir puts these top-level folders under chanaxis/
SUBPACKAGES = {"adapters": "adapters", "cli": "cli", "data_cards": "data_cards"}


def test_import_linter_contracts(tmp_path):
    pkg = tmp_path / "chanaxis"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "chanaxis", pkg, ignore=ignore)
    for name, folder in SUBPACKAGES.items():
        shutil.copytree(ROOT / folder, pkg / name, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    lint = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(lint), "pyproject.toml"], cwd=tmp_path, capture_output=True, text=True,
                       env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert r.returncode == 0 and "0 broken" in r.stdout, r.stdout[-4000:] + r.stderr[-2000:]


def private_uses(path: Path) -> list[str]:
    """`from chanaxis… import _name`, private chanaxis modules, and `mod._name` on an imported chanaxis module."""
    tree = ast.parse(path.read_text())
    out, mods = [], set()

    def private(name):
        return name.startswith("_") and not name.startswith("__")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("chanaxis")):
            if any(private(p) for p in (node.module or "").split(".")):
                out.append(f"{path}:{node.lineno}: from {node.module} (a private module)")
            for a in node.names:
                if private(a.name):
                    out.append(f"{path}:{node.lineno}: from {node.module or '.'} import {a.name}")
                mods.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("chanaxis"):
                    mods.add((a.asname or a.name).split(".")[0])
                    if any(private(p) for p in a.name.split(".")):
                        out.append(f"{path}:{node.lineno}: import {a.name} (a private module)")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in mods:
                out.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    return out


def test_no_private_name_used_outside_its_module():
    found = [v for folder in ("chanaxis", "adapters", "cli", "tests", "bench")
             for f in sorted((ROOT / folder).rglob("*.py")) for v in private_uses(f)]
    assert not found, "\n".join(found)


def test_private_name_check_catches_each_form(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from chanaxis.store import _x\nfrom chanaxis.adapters import _onnx\nimport chanaxis.store as s\n"
                 "s._y\nfrom . import _z\n")
    assert len(private_uses(f)) == 4
