"""The review station's templates and scripts ship inside the package: a wheel built from the tree holds
them (the service image installs the package, not the checkout)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
UI = REPO_ROOT / "service" / "ui"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_wheel_holds_every_template_and_static_file(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    # Built from a copy: pip and setuptools write build/ and *.egg-info next to the sources.
    source = tmp_path / "src"
    files = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "ls-files", "--cached", "--others", "--exclude-standard", "pyproject.toml",
         "README.md", "service"],
        check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    for name in files:
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((REPO_ROOT / name).read_bytes())
    subprocess.run([*command, str(source)], check=True, capture_output=True, timeout=240)
    wheel = next(tmp_path.glob("*.whl"))
    inside = set(zipfile.ZipFile(wheel).namelist())
    assets = [p.relative_to(REPO_ROOT).as_posix() for p in UI.rglob("*") if p.parent.name in ("templates", "static")]
    assert assets and all(a in inside for a in assets), sorted(set(assets) - inside)
