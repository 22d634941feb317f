"""What training may import from the service: the table in docs/DESIGN.md ("Training → service"), enforced.

Training shares the service's input function, file reader, model-folder contract and engine so that what is
trained, exported and measured is what is served; nothing else (no HTTP app, storage, settings or UI)."""

from __future__ import annotations

import ast
from pathlib import Path

TRAINING_DIR = Path(__file__).resolve().parents[2] / "training"

# service module → the training modules (files or packages, relative to training/) that may import it.
ALLOWED: dict[str, tuple[str, ...]] = {
    "service.preprocessing": ("",),  # everywhere: the one function that makes a model's inputs
    "service.codecs": ("data/layout.py",),  # the one reader of a part's files
    "service.manifest": ("export/", "calibration/recalibrate.py"),  # write and rewrite a model folder
    # Open and score exported models as the service does (evaluate --model, the demo sample, calibrate).
    "service.engine": ("scoring/engine.py", "evaluation/", "calibration/recalibrate.py"),
    # The threshold rule, the calibration record, the false-reject rate's range and the writing of a new
    # version: one definition for training and the service's commissioning from recorded parts.
    "service.lifecycle": ("calibration/", "config.py", "evaluation/", "export/", "runs.py", "train/cli.py"),
    # evaluate measures regions with the service's own cut and footprint (region sizes per defect type)
    "service.postprocessing": ("evaluation/region_sizes.py",),
}


def _service_imports(path: Path) -> set[str]:
    """The service modules `path` imports, at the depth ALLOWED names them (service.engine.loading → service.engine)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):  # function bodies too: a lazy import counts
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {".".join(n.split(".")[:2]) for n in names if n.split(".")[0] == "service"}


def _offences(files: dict[str, Path]) -> dict[str, list[str]]:
    """{path relative to training/: the service modules it imports outside ALLOWED}."""
    found = {}
    for rel, path in files.items():
        bad = sorted(m for m in _service_imports(path) if not any(rel.startswith(p) for p in ALLOWED.get(m, ())))
        if bad:
            found[rel] = bad
    return found


def test_training_imports_from_the_service_only_what_design_allows() -> None:
    files = {f.relative_to(TRAINING_DIR).as_posix(): f for f in sorted(TRAINING_DIR.rglob("*.py"))}
    assert len(files) > 30  # the walk really found the package
    assert _offences(files) == {}


def test_the_check_reports_an_import_outside_the_table(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from service.api import app\nfrom service.preprocessing import preprocess_part\n"
                     "def f():\n    import service.engine.loading\n")  # fmt: skip
    assert _offences({"model/probe.py": probe}) == {"model/probe.py": ["service.api", "service.engine"]}
    assert _offences({"scoring/engine.py": probe}) == {"scoring/engine.py": ["service.api"]}


def test_design_md_lists_the_same_table() -> None:
    design = (TRAINING_DIR.parent / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    section = design.split("### Training → service", 1)[1].split("\n#", 1)[0]
    for module, owners in ALLOWED.items():
        line = next((ln for ln in section.splitlines() if f"`{module}`" in ln), "")
        assert line, f"DESIGN.md's table has no row for {module}"
        for owner in owners:
            assert (f"`training/{owner}`" if owner else "every module") in line, (module, owner)
