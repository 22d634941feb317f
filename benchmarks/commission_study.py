"""Commissioning study: a model calibrated on a dozen validation parts vs the same model commissioned from
a few hundred line parts passed through the real service (docs/RESULTS.md, "Commissioning").

Starts `python -m service` on a copy of the model folder, posts the line's parts (good ones and defects),
records the reviews a quality station would make (NG good parts: false rejects; NG defects: confirmed;
OK parts are not reviewed, so missed defects stay in the good sample as they would on a line), asks the
service for a proposal from those records, saves and promotes it, then posts unseen good parts and unseen
defects and reports, for the version before and after: the promised false-reject rate and the
distribution-free bound, the false-reject rate observed on the unseen good parts, and the detection.

    python -m benchmarks.commission_study --model models/demo --line-good DATA/puck/test/good \
        --line-defects DATA/puck/test --unseen-good ... --unseen-defects ... --out out/commission.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from service.lifecycle.thresholds import binomial_upper_bound
from service.records.database import create_db_engine, database_url
from service.records.reviews import add_review

ADMIN = "commission-study-admin-key-0123"
KEY = "commission-study-line-key-01234"
DEFECT_TYPES = ("bump", "crack", "dent", "hole", "stain")


def parts(folder: Path, first: int = 0, count: int | None = None) -> list[tuple[Path, Path]]:
    """(rgb, xyz) pairs of one rgb/ + xyz/ folder, sorted, [first, first + count)."""
    rgb = sorted((folder / "rgb").glob("*.png"))
    chosen = rgb[first : None if count is None else first + count]
    return [(p, folder / "xyz" / f"{p.stem}.tiff") for p in chosen]


def defect_parts(split: Path) -> list[tuple[Path, Path]]:
    return [pair for kind in DEFECT_TYPES if (split / kind).is_dir() for pair in parts(split / kind)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(client: httpx.Client, pair: tuple[Path, Path], part_id: str) -> dict[str, Any]:
    rgb, xyz = pair
    answer = client.post(
        "/v1/predict",
        files={"rgb": (rgb.name, rgb.read_bytes(), "image/png"), "xyz": (xyz.name, xyz.read_bytes(), "image/tiff")},
        data={"part_id": part_id},
    )
    answer.raise_for_status()
    return dict(answer.json())


def figures(threshold: float, good: np.ndarray, defects: np.ndarray) -> dict[str, Any]:
    above, caught = int((good > threshold).sum()), int((defects > threshold).sum())
    return {
        "threshold": threshold,
        "false_rejects": f"{above} of {good.size}",
        "observed_false_reject_rate": above / good.size,
        "observed_upper_bound_95": binomial_upper_bound(above, int(good.size)),
        "detected": f"{caught} of {defects.size}",
        "detection_rate": caught / defects.size,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="commission-study-"))
    models = work / "models"
    shutil.copytree(args.model, models / args.model.name, ignore=shutil.ignore_patterns("sample", "history"))
    data_dir = work / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGENET_")}
    env.update(
        BRIDGENET_MODELS_DIR=str(models), BRIDGENET_DEFAULT_MODEL=args.model.name, BRIDGENET_PROVIDERS="cpu",
        BRIDGENET_API_KEY=KEY, BRIDGENET_ADMIN_KEY=ADMIN, BRIDGENET_DATA_DIR=str(data_dir),
        BRIDGENET_ARCHIVE="none", BRIDGENET_COMMISSION_MIN_PARTS=str(args.min_parts), BRIDGENET_INTRA_OP_THREADS="2",
    )  # fmt: skip
    port = free_port()
    log = (work / "service.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=log
    )
    name = args.model.name
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": KEY}, timeout=120.0)
        for _ in range(600):
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        line_good, line_defects = parts(args.line_good, 0, args.line_count), defect_parts(args.line_defects)
        db = create_db_engine(database_url(data_dir, None))
        missed = 0
        start = time.monotonic()
        for i, pair in enumerate(line_good + line_defects):
            defective = i >= len(line_good)
            answer = post(client, pair, f"line-{i:04d}")
            if answer["is_anomalous"]:
                add_review(db, answer["request_id"], "confirmed" if defective else "false_reject", operator="study")
            elif defective:
                missed += 1
            if i % 50 == 0:
                print(f"line part {i}/{len(line_good) + len(line_defects)}", file=sys.stderr)
        line_s = time.monotonic() - start
        admin = {"X-Admin-Key": ADMIN}
        proposal = client.post(f"/v1/admin/models/{name}/calibrations", json={}, headers=admin)
        proposal.raise_for_status()
        body = proposal.json()
        saved = client.post(f"/v1/admin/models/{name}/calibrations/{body['id']}/save", headers=admin).json()
        promoted = client.post(f"/v1/admin/models/{name}/promote", json={"version": saved["version"]}, headers=admin)
        promoted.raise_for_status()
        unseen_good = parts(args.unseen_good, args.unseen_first, args.unseen_count)
        unseen_defects = defect_parts(args.unseen_defects)
        scores: dict[str, list[float]] = {"good": [], "defects": []}
        verdict_ng = {"good": 0, "defects": 0}
        for kind, pairs in (("good", unseen_good), ("defects", unseen_defects)):
            for i, pair in enumerate(pairs):
                answer = post(client, pair, f"unseen-{kind}-{i:04d}")
                assert answer["model"]["version"] == saved["version"], answer["model"]
                scores[kind].append(float(answer["score"]))
                verdict_ng[kind] += int(answer["is_anomalous"])
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
    good, defects = np.array(scores["good"]), np.array(scores["defects"])
    active, proposed = body["active"], body["proposed"]
    keys = ("method", "n_parts", "expected_false_reject_rate", "false_reject_rate_interval",
            "distribution_free_upper_bound")  # fmt: skip
    return {
        "line": {
            "good_parts": len(line_good),
            "defects": len(line_defects),
            "defects_missed_and_unreviewed": missed,
            "seconds": round(line_s, 1),
            **{k: body[k] for k in ("good_sample", "defect_sample", "warnings")},
        },
        "before": {
            "version": active["version"],
            **{k: active[k] for k in keys},
            "line_defects": active["on_the_line"],
            "unseen": figures(active["threshold"], good, defects),
        },
        "after": {
            "version": saved["version"],
            **{k: proposed[k] for k in keys},
            "line_defects": proposed["on_the_line"],
            "unseen": figures(proposed["threshold"], good, defects),
            "unseen_verdicts_ng": verdict_ng,
        },
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--line-good", type=Path, required=True, help="rgb/ + xyz/ of good parts; the first --line-count")
    p.add_argument("--line-count", type=int, default=200)
    p.add_argument("--line-defects", type=Path, required=True, help="a test split with defect folders")
    p.add_argument("--unseen-good", type=Path, required=True)
    p.add_argument("--unseen-first", type=int, default=200)
    p.add_argument("--unseen-count", type=int, default=100)
    p.add_argument("--unseen-defects", type=Path, required=True)
    p.add_argument("--min-parts", type=int, default=100, help="BRIDGENET_COMMISSION_MIN_PARTS of the service")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
