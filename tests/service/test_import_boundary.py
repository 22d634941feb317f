"""The service never imports torch or the training package (the serving image has neither)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SERVICE_DIR = Path(__file__).resolve().parents[2] / "service"
FORBIDDEN = ("torch", "torchvision", "timm", "training")


def test_importing_the_app_loads_no_torch_and_no_training() -> None:
    code = (
        "import sys, service.main, service.__main__; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training', 'torchvision', 'timm')); "
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
