"""Write the golden outputs: `python -m tests.service.golden.make_golden` (from the repository root).

Run it only together with a PREPROCESSING_VERSION bump: the goldens exist to catch output changes that
were not meant; an intended change gets a new version and new goldens (the file name carries the version).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.preprocessing import PREPROCESSING_VERSION, PreprocessConfig, preprocess_part
from service.preprocessing.pointcloud import point_cloud_to_depth
from tests.service.golden.synthetic import SyntheticPart, make_part

GOLDEN_DIR = Path(__file__).parent
GOLDEN_SIZE = 32  # S for the golden model inputs: small enough to store, still a real resize


def golden_path() -> Path:
    return GOLDEN_DIR / f"preprocessing_v{PREPROCESSING_VERSION}.npz"


def golden_cases() -> dict[str, SyntheticPart]:
    """The fixed inputs: 40×48 tilted table + box + a 2×2 hole; one with all corners, one with an empty
    top-left corner (plane by RANSAC) and NaN points, one with sensor noise."""
    nan_part = make_part(empty_corner=4)
    xyz = nan_part.xyz.copy()
    xyz[30:32, 5:9, 0] = np.nan  # on the table
    xyz[20, 30, 2] = np.inf  # on the box
    return {
        "corners": make_part(),
        "fallback_nan": SyntheticPart(nan_part.rgb, xyz, nan_part.box, nan_part.plane),
        "noisy": make_part(noise=0.0005, seed=3),
    }


def compute(part: SyntheticPart) -> dict[str, np.ndarray]:
    config = PreprocessConfig(image_size=GOLDEN_SIZE)
    depth = point_cloud_to_depth(part.xyz, config)
    pre = preprocess_part(part.rgb, part.xyz, config)
    return {
        "depth": depth.depth,
        "foreground": depth.foreground,
        "plane": depth.plane,
        "input_rgb": pre.rgb,
        "input_depth": pre.depth,
        "input_foreground": pre.foreground,
    }


def main() -> None:
    arrays = {f"{case}/{key}": value for case, part in golden_cases().items() for key, value in compute(part).items()}
    np.savez_compressed(golden_path(), **arrays)  # type: ignore[arg-type]  # numpy stub: **kwds vs allow_pickle
    print(f"wrote {golden_path()} ({len(arrays)} arrays)")


if __name__ == "__main__":
    main()
