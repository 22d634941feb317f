"""The service never imports torch or the training package (the serving image has neither), and only
service.cluster imports Ray (the `cluster` extra, not in the single-host image)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SERVICE_DIR = Path(__file__).resolve().parents[2] / "service"
FORBIDDEN = ("torch", "torchvision", "timm", "training")
RAY_OWNER = SERVICE_DIR / "cluster"


def test_importing_the_app_loads_no_torch_and_no_training() -> None:
    code = (
        "import sys, service.main, service.__main__; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'training', 'torchvision', 'timm', 'ray')); "
        "assert not bad, bad"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=SERVICE_DIR.parent, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):  # walks function bodies too: a lazy import counts as well
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_module_under_service_imports_torch_or_training() -> None:
    files = sorted(SERVICE_DIR.rglob("*.py"))
    assert len(files) > 10  # the walk really found the package
    offenders = {str(f.relative_to(SERVICE_DIR)): sorted(_imported_roots(f) & set(FORBIDDEN)) for f in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_service_cluster_imports_ray() -> None:
    files = sorted(f for f in SERVICE_DIR.rglob("*.py") if RAY_OWNER not in f.parents)
    assert len(files) > 10
    assert [str(f.relative_to(SERVICE_DIR)) for f in files if "ray" in _imported_roots(f)] == []
    assert "ray" in _imported_roots(RAY_OWNER / "app.py")  # the walk sees the owner's import
