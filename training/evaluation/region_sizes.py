"""How well the answered regions measure the defect: region area / true defect area, IoU and length per
defect type, at the upload's resolution with the service's own region and footprint functions (no torch).

Per defective part, the map goes back to the upload's size (`map_to_input_size`), its regions are cut by
`label_regions` and the region overlapping the ground truth most is measured by `find_regions`, as in an
answer. The truth is measured on the same cloud: its area is the sum of `pixel_areas` over the mask
(pixels without a footprint count with the mask's mean footprint, the rule regions follow) and its length
is that of the mask's longest component as `find_regions` measures a region.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.postprocessing.maps import map_to_input_size
from service.postprocessing.regions import REGION_PEAK_RATIO, find_regions, label_regions, pixel_areas, typical_cell
from training.data.layout import Sample, load_sample


@dataclass(frozen=True)
class PartRegions:
    """One part's regions against its ground truth. Sizes in mm² / mm; None where undefined (no region over
    the defect, a good part, or no point of the cloud under it)."""

    defect: str
    detected: bool  # image score above the threshold
    has_region: bool  # any region at all
    on_defect: bool  # some region overlaps the ground truth
    iou: float | None  # all regions' pixels against the ground truth's (defective parts)
    region_area_mm2: float | None  # of the best-overlapping region
    true_area_mm2: float | None
    region_length_mm: float | None
    true_length_mm: float | None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None and b > 0 else None


def true_size(gt: np.ndarray, xyz: np.ndarray) -> tuple[float | None, float | None]:
    """(area mm², length mm) of the defect under `gt` ((H, W) bool) on the (H, W, 3) cloud in metres."""
    foot = pixel_areas(xyz, typical_cell(xyz))[gt]
    known = np.isfinite(foot)
    area = float(foot[known].mean() * gt.sum()) if known.any() else None
    return area, find_regions(gt.astype(np.float32), 0.5, xyz, peak_ratio=0.0).largest_length_mm


def part_regions(
    model_map: np.ndarray,
    xyz: np.ndarray,
    gt: np.ndarray,
    *,
    defect: str,
    detected: bool,
    pixel_threshold: float,
    peak_ratio: float = REGION_PEAK_RATIO,
) -> PartRegions:
    """`model_map`: (S, S) float32 at the model's resolution; `xyz`: (H, W, 3) float32 cloud in metres;
    `gt`: (H, W) bool ground truth (all False on a good part)."""
    amap = map_to_input_size(model_map, *xyz.shape[:2])
    _, labels = label_regions(amap, pixel_threshold, peak_ratio)
    region = labels > 0
    if not gt.any():
        return PartRegions(defect, detected, bool(region.any()), False, None, None, None, None, None)
    true_area, true_length = true_size(gt, xyz)
    overlap = np.bincount(labels[gt & region], minlength=1)
    iou = float(np.count_nonzero(region & gt) / np.count_nonzero(region | gt))
    if overlap.size <= 1:
        return PartRegions(defect, detected, bool(region.any()), False, iou, None, true_area, None, true_length)
    best = labels == int(np.argmax(overlap[1:])) + 1
    measured = find_regions(best.astype(np.float32), 0.5, xyz, peak_ratio=0.0)
    return PartRegions(
        defect,
        detected,
        True,
        True,
        iou,
        measured.largest_area_mm2,
        true_area,
        measured.largest_length_mm,
        true_length,
    )


def _spread(values: Sequence[float | None]) -> dict[str, float | None]:
    known = np.array([v for v in values if v is not None], dtype=np.float64)
    if known.size == 0:
        return {"median": None, "p25": None, "p75": None, "n": 0}
    p25, median, p75 = np.percentile(known, [25, 50, 75])
    return {"median": float(median), "p25": float(p25), "p75": float(p75), "n": int(known.size)}


def summarize_parts(parts: Sequence[PartRegions]) -> dict[str, Any]:
    """Per defect type and over all defective parts ("all"): detected parts, the share of them with a
    region over the defect, and over those the spread of region/true area and length ratios; the IoU over
    every detected part (0 where no region overlaps). Plus the share of good parts showing any region."""
    defective = [p for p in parts if p.defect != "good"]
    good = [p for p in parts if p.defect == "good"]
    groups = {kind: [p for p in defective if p.defect == kind] for kind in sorted({p.defect for p in defective})}
    groups["all"] = defective
    table: dict[str, Any] = {}
    for kind, members in groups.items():
        detected = [p for p in members if p.detected]
        over = [p for p in detected if p.on_defect]
        table[kind] = {
            "parts": len(members),
            "detected": len(detected),
            "detected_with_region_on_defect": len(over),
            "share_detected_with_region_on_defect": len(over) / len(detected) if detected else None,
            "area_ratio": _spread([_ratio(p.region_area_mm2, p.true_area_mm2) for p in over]),
            "length_ratio": _spread([_ratio(p.region_length_mm, p.true_length_mm) for p in over]),
            "iou": _spread([p.iou if p.iou is not None else 0.0 for p in detected]),
            "true_area_mm2": _spread([p.true_area_mm2 for p in members]),
            "region_area_mm2": _spread([p.region_area_mm2 for p in over]),
            "true_length_mm": _spread([p.true_length_mm for p in members]),
            "region_length_mm": _spread([p.region_length_mm for p in over]),
        }
    return {
        "per_defect": table,
        "good_parts_with_a_region": sum(p.has_region for p in good) / len(good) if good else None,
    }


def region_sizes(
    samples: Sequence[Sample],
    maps: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    pixel_threshold: float,
    peak_ratio: float = REGION_PEAK_RATIO,
) -> dict[str, Any]:
    """The region-size report of a test split: each part's rgb-sized cloud and mask are read again from
    disk (the prepared split holds them at the model's resolution only). `maps`: (N, S, S) float32,
    `scores`: (N,) raw image scores, verdict NG iff score > `threshold`."""
    parts = []
    for sample, model_map, score in zip(samples, maps, scores, strict=True):
        raw = load_sample(sample)
        if raw.xyz is None:
            raise ValueError(f"{sample.rgb_path}: no point cloud; region sizes need xyz for every part")
        parts.append(
            part_regions(
                model_map,
                raw.xyz,
                raw.gt,
                defect=sample.defect,
                detected=bool(score > threshold),
                pixel_threshold=pixel_threshold,
                peak_ratio=peak_ratio,
            )
        )
    return {"pixel_threshold": pixel_threshold, "peak_ratio": peak_ratio, **summarize_parts(parts)}


def markdown_lines(report: dict[str, Any]) -> list[str]:
    """The region-size table for the evaluation's markdown."""

    def f(spread: dict[str, Any], spec: str = ".2f") -> str:
        if spread["median"] is None:
            return "–"
        return f"{spread['median']:{spec}} ({spread['p25']:{spec}}–{spread['p75']:{spec}})"

    lines = [
        "",
        f"Region sizes (pixel threshold {report['pixel_threshold']:.4f}, peak ratio {report['peak_ratio']:g}; "
        "medians with p25–p75; ratios are region / true defect, of the region overlapping the defect most):",
        "",
        "| defect | detected | with a region on the defect | area ratio | length ratio | IoU | true area mm² |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, row in report["per_defect"].items():
        share = row["share_detected_with_region_on_defect"]
        lines.append(
            f"| {kind} | {row['detected']} of {row['parts']} | {row['detected_with_region_on_defect']}"
            + (f" ({share:.0%})" if share is not None else "")
            + f" | {f(row['area_ratio'])} | {f(row['length_ratio'])} | {f(row['iou'])} | "
            f"{f(row['true_area_mm2'], '.1f')} |"
        )
    good = report["good_parts_with_a_region"]
    if good is not None:
        lines += ["", f"Good parts showing a region: {good:.0%}."]
    return lines
