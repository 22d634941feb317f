"""CI's entry point (.ci/run) and the Makefile targets it runs: the code is linted before the tests."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.deploy.tools import REPO_ROOT

CI_RUN = REPO_ROOT / ".ci" / "run"


def _make_dry_run(target: str) -> list[str]:
    """The tool commands `make -n TARGET` would run: ruff and mypy lines only (the install step's lines come
    first when pyproject.toml is newer than the environment, and are not what is checked here)."""
    make = shutil.which("make")
    if make is None:
        pytest.fail("make not found on PATH: CI runs through it")
    result = subprocess.run([make, "-n", target], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    tools = (".venv/bin/ruff", ".venv/bin/mypy")
    return [line for line in result.stdout.splitlines() if line.startswith(tools)]


def test_ci_lints_before_it_tests() -> None:
    checked = subprocess.run(["bash", "-n", str(CI_RUN)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    steps = [line.strip() for line in CI_RUN.read_text(encoding="utf-8").splitlines()]
    assert "set -euo pipefail" in steps  # a failing step fails CI
    assert "make lint" in steps and "make test" in steps
    assert steps.index("make lint") < steps.index("make test")


def test_make_lint_runs_ruff_check_ruff_format_check_and_mypy() -> None:
    commands = [line for line in _make_dry_run("lint") if line.startswith(".venv/bin/")]
    code = "service training tests benchmarks docker"
    assert commands == [
        f".venv/bin/ruff check {code}",
        f".venv/bin/ruff format --check {code}",
        ".venv/bin/mypy",
    ]
    # `make format` rewrites exactly what `make lint` checks.
    assert [line for line in _make_dry_run("format") if line.startswith(".venv/bin/")] == [
        f".venv/bin/ruff format {code}",
        f".venv/bin/ruff check --fix {code}",
    ]
