"""Recorded parts for the review station's tests: real uploads (the demo sample), written the way the
predict handler records them (service.records), with regions in the verdicts helper's shape."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from service.records.store import DecisionRecord, Evidence, Recorder
from tests.records.conftest import decision as records_decision

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE = REPO_ROOT / "models" / "demo" / "sample"
RGB = (SAMPLE / "rgb.png").read_bytes()
XYZ = (SAMPLE / "xyz.tiff").read_bytes()
GOOD_RGB = (SAMPLE / "good_rgb.png").read_bytes()
GOOD_XYZ = (SAMPLE / "good_xyz.tiff").read_bytes()
HW = (400, 400)
REGION = {
    "x": 180, "y": 150, "width": 40, "height": 30, "area_px": 900, "area_mm2": 12.5, "length_mm": 5.25,
    "measured_fraction": 1.0, "max_score": 0.91, "mean_score": 0.7,
}  # fmt: skip


def anomaly_map(hot: bool) -> np.ndarray:
    """A 256×256 map: low everywhere, and a hot block where REGION is (scaled from 400×400) when `hot`."""
    amap = np.full((256, 256), 0.05, np.float32)
    if hot:
        amap[96:115, 115:141] = 0.9
    return amap


def decision(
    request_id: str,
    *,
    ng: bool,
    received_at: datetime,
    model: str = "demo",
    part_id: str | None = None,
    regions: list[dict[str, Any]] | None = None,
    review: bool = False,
) -> DecisionRecord:
    """The records tests' decision (score 0.9 NG / 0.1 OK against 0.5) under this id, with `regions` (default:
    REGION when NG); `review`: an NG part in the review band (verdict "review", upper edge 0.95)."""
    base = records_decision(0, ng=ng or review, model=model, at=received_at)
    if regions is None:
        regions = [REGION] if ng or review else []
    return replace(
        base,
        request_id=request_id,
        part_id=part_id or f"line1-{request_id}",
        regions=regions,
        verdict="review" if review else None,
    )


def record(recorder: Recorder, request_id: str, *, ng: bool, received_at: datetime, **extra: Any) -> None:
    """Record one part with the demo sample as its evidence (the defective one when NG)."""
    rgb, xyz = (RGB, XYZ) if ng or extra.get("review") else (GOOD_RGB, GOOD_XYZ)
    outcome = recorder.record(
        decision(request_id, ng=ng, received_at=received_at, **extra), Evidence(rgb, xyz, anomaly_map(ng))
    )
    assert outcome.evidence in ("archived", "not_kept"), outcome
