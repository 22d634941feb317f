"""`python -m training import-reviews`: reviewed parts from a running service → training data.

Reads the audit trail over the service's HTTP API (`GET /v1/results`, newest first, paged; each record's
`review` is the latest one from the review station) and fetches each reviewed part's archived uploads
(`GET /v1/results/{id}/files/{rgb,xyz}`). Writes them in the MVTec 3D-AD layout the trainer reads:

- false_reject (an NG verdict on a good part) → `<category>/train/good/` (4 of 5) and
  `<category>/validation/good/` (every 5th): good parts for retraining and re-calibration.
- confirmed (and missed_defect) → `<category>/test/<defect type>/` with a ground-truth mask: the regions'
  bounding boxes filled when the record has regions, else an empty mask (the part is defective but
  where is unknown; image-level metrics use it, pixel-level metrics see no defect pixels there). Parts
  reviewed without a defect type go to `test/unspecified/`.
- `<category>/reviews.jsonl`: one line per imported part (request id, part id, model, score, threshold,
  review, where it went): the evidence trail from each file back to the decision and the reviewer.

Files are named by request id, so a second import (e.g. `--since` last week) adds to the same folders
and rewrites what is there already; `--out` may be an existing data root (its other parts stay). Parts
whose evidence is not archived (BRIDGENET_ARCHIVE=ng keeps OK parts' uploads only with `all`; retention)
are skipped and counted. Needs httpx, numpy, OpenCV and tifffile only: no database access, no torch.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import tifffile

log = logging.getLogger(__name__)

PAGE = 500
VALIDATION_EVERY = 5  # every 5th good part goes to validation/good
UNSPECIFIED = "unspecified"
REVIEWS_FILE = "reviews.jsonl"
PNG, JPEG, NPY = b"\x89PNG", b"\xff\xd8", b"\x93NUMPY"
TIFF = (b"II*\x00", b"MM\x00*")
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


class ReviewImportError(RuntimeError):
    """The service refused or answered something this command cannot use."""


@dataclass(frozen=True)
class Placement:
    split: str
    defect: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--service", required=True, help="base URL of the service, e.g. http://line1-inspect:8000")
    parser.add_argument(
        "--results-key",
        default=os.environ.get("BRIDGENET_RESULTS_KEY"),
        help="the service's read-only results key (default: $BRIDGENET_RESULTS_KEY); the line key cannot read results",
    )
    parser.add_argument("--out", type=Path, required=True, help="data root to write <category>/... into (created)")
    parser.add_argument("--category", required=True, help="category folder name under --out")
    parser.add_argument("--since", help="only parts received at or after this time (ISO 8601, UTC; default: all)")
    parser.add_argument("--until", help="only parts received before this time (ISO 8601; default: no end)")
    parser.add_argument("--model", help="only parts judged by this model (default: every model)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP request")


def run(args: argparse.Namespace) -> int:
    headers = {"X-API-Key": args.results_key} if args.results_key else {}
    with httpx.Client(base_url=args.service, headers=headers, timeout=args.timeout) as client:
        try:
            summary = import_reviews(
                client, args.out, args.category, since=args.since, until=args.until, model=args.model
            )
        except (ReviewImportError, httpx.HTTPError) as exc:
            print(f"import-reviews: {exc}", file=sys.stderr)
            return 2
    print(json.dumps(summary, indent=2))
    if not summary["imported"]:
        print("import-reviews: no reviewed part with archived evidence in that range", file=sys.stderr)
        return 1
    return 0


def _get(client: httpx.Client, url: str, **params: Any) -> httpx.Response:
    answer = client.get(url, params={k: v for k, v in params.items() if v is not None})
    if answer.status_code != 200:
        try:
            error = answer.json()["error"]
            detail = f"{error['code']}: {error['message']}"
        except (ValueError, KeyError, TypeError):
            detail = answer.text[:200]
        raise ReviewImportError(f"GET {answer.request.url} answered {answer.status_code} ({detail})")
    return answer


def reviewed_results(client: httpx.Client, **filters: str | None) -> Iterator[dict[str, Any]]:
    """Every record with a review among those the filters select, newest first."""
    cursor = None
    while True:
        page = _get(client, "/v1/results", limit=PAGE, cursor=cursor, **filters).json()
        for result in page["results"]:
            if "review" not in result:
                raise ReviewImportError("the service's /v1/results carries no reviews: it predates the review station")
            if result["review"] is not None:
                yield result
        cursor = page["next_cursor"]
        if cursor is None:
            return


def _evidence(client: httpx.Client, request_id: str, kind: str) -> bytes | None:
    answer = client.get(f"/v1/results/{request_id}/files/{kind}")
    if answer.status_code == 404:
        return None
    if answer.status_code != 200:
        raise ReviewImportError(f"GET /v1/results/{request_id}/files/{kind} answered {answer.status_code}")
    return answer.content


def rgb_as_png(data: bytes) -> tuple[bytes, tuple[int, int]]:
    """The RGB upload as PNG bytes (PNG kept as it is) and its (H, W)."""
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ReviewImportError("an archived rgb file is not an image OpenCV or tifffile can read")
    if data.startswith(PNG):
        return data, pixels.shape[:2]
    ok, buf = cv2.imencode(".png", pixels)
    if not ok:
        raise ReviewImportError("could not encode an rgb image as PNG")
    return buf.tobytes(), pixels.shape[:2]


def xyz_as_tiff(data: bytes) -> bytes:
    """The point cloud as a float32 (H, W, 3) TIFF, the data set's format (a TIFF upload kept as it is)."""
    if data.startswith(TIFF):
        return data
    if data.startswith(NPY):
        xyz = np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32)
        out = io.BytesIO(b"")
        tifffile.imwrite(out, xyz)
        return out.getvalue()
    raise ReviewImportError("an archived xyz file is neither TIFF nor NPY")


def region_mask(regions: list[dict[str, Any]], hw: tuple[int, int]) -> np.ndarray:
    """255 inside each region's bounding box (upload pixels), 0 elsewhere; all 0 without regions."""
    mask = np.zeros(hw, np.uint8)
    for r in regions:
        x, y, w, h = (int(r[k]) for k in ("x", "y", "width", "height"))
        mask[max(y, 0) : y + h, max(x, 0) : x + w] = 255
    return mask


def placement(result: dict[str, Any], good_index: int) -> Placement:
    review = result["review"]
    if review["outcome"] == "false_reject":
        split = "validation" if good_index % VALIDATION_EVERY == VALIDATION_EVERY - 1 else "train"
        return Placement(split, "good")
    defect = _SAFE.sub("_", review.get("defect_type") or UNSPECIFIED)
    return Placement("test", defect if defect not in ("good", "", ".", "..") else UNSPECIFIED)


def import_reviews(
    client: httpx.Client,
    out: Path,
    category: str,
    *,
    since: str | None = None,
    until: str | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """Write every reviewed part with archived evidence under `out/category`; return a summary."""
    root = Path(out) / _SAFE.sub("_", category)
    placed: Counter[str] = Counter()
    skipped = 0
    good_index = 0
    lines = []
    # Oldest first, so that the train/validation rotation is stable as new reviews arrive.
    results = list(reviewed_results(client, since=since, until=until, model=model))[::-1]
    for result in results:
        request_id = result["request_id"]
        rgb, xyz = _evidence(client, request_id, "rgb"), _evidence(client, request_id, "xyz")
        if rgb is None or xyz is None:
            log.warning("request %s: no archived evidence (%s); skipped", request_id, result["evidence"]["status"])
            skipped += 1
            continue
        where = placement(result, good_index)
        good_index += where.defect == "good"
        stem = _SAFE.sub("_", request_id)
        folder = root / where.split / where.defect
        for sub in ("rgb", "xyz") + (("gt",) if where.defect != "good" else ()):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        png, hw = rgb_as_png(rgb)
        (folder / "rgb" / f"{stem}.png").write_bytes(png)
        (folder / "xyz" / f"{stem}.tiff").write_bytes(xyz_as_tiff(xyz))
        if where.defect != "good":
            ok, mask = cv2.imencode(".png", region_mask(result.get("regions") or [], hw))
            assert ok
            (folder / "gt" / f"{stem}.png").write_bytes(mask.tobytes())
        placed[f"{where.split}/{where.defect}"] += 1
        lines.append(
            {
                "request_id": request_id,
                "part_id": result["part_id"],
                "created": result["created"],
                "model": result["model"],
                "score": result["score"],
                "threshold": result["threshold"],
                "regions": result.get("regions") or [],
                "review": result["review"],
                "written_to": f"{where.split}/{where.defect}/rgb/{stem}.png",
            }
        )
    if lines:
        with (root / REVIEWS_FILE).open("a", encoding="utf-8") as f:
            for line in lines:
                f.write(json.dumps(line) + "\n")
    return {
        "out": str(root),
        "imported": sum(placed.values()),
        "by_folder": dict(sorted(placed.items())),
        "skipped_no_evidence": skipped,
    }
