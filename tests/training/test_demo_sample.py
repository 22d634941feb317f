"""training.evaluation.demo_sample: the verdict summary and the choice of the demo's sample parts."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.evaluation.demo_sample import Verdict, copy_samples, report


def part(folder: Path, defect: str, stem: str, score: float, ng: bool, on_defect: bool, regions: bool) -> Verdict:
    for kind, suffix in (("rgb", ".png"), ("xyz", ".tiff"), ("gt", ".png")):
        (folder / defect / kind).mkdir(parents=True, exist_ok=True)
        (folder / defect / kind / f"{stem}{suffix}").write_bytes(f"{defect}/{kind}/{stem}".encode())
    return Verdict(defect, stem, folder / defect, score, ng, on_defect, regions)


def test_the_ng_sample_is_the_best_located_detection_and_the_good_one_is_clean(tmp_path: Path) -> None:
    split = tmp_path / "test"
    verdicts = [
        part(split, "good", "000", 0.70, False, False, True),  # OK but with a region: not a clean sample
        part(split, "good", "001", 0.50, False, False, False),
        part(split, "crack", "000", 0.95, True, False, True),  # NG, but its region is not on the crack
        part(split, "crack", "001", 0.85, True, True, True),
        part(split, "crack", "002", 0.80, True, True, True),
        part(split, "crack", "003", 0.60, False, False, False),
        part(split, "dent", "000", 0.99, True, True, True),  # another defect type
    ]
    ng, good = copy_samples(verdicts, "crack", tmp_path / "sample")
    assert (ng.stem, good.stem) == ("001", "001")
    assert (tmp_path / "sample" / "rgb.png").read_bytes() == b"crack/rgb/001"
    assert (tmp_path / "sample" / "gt.png").read_bytes() == b"crack/gt/001"
    assert (tmp_path / "sample" / "good_xyz.tiff").read_bytes() == b"good/xyz/001"
    text = report(verdicts)
    assert (
        "false rejects 0 of 2 good parts" in text and "detection 4 of 5 defective parts (crack 3/4, dent 1/1)" in text
    )
    assert "3 of the 4 detected show their top region over the ground truth" in text
    with pytest.raises(SystemExit, match="no stain part"):
        copy_samples(verdicts, "stain", tmp_path / "none")
