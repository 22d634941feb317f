"""Writing a re-calibrated version of a model folder: its manifest and its files, verified before they land.

Shared by `python -m training calibrate` (the new version goes to the top of the folder, the old one under
`history/`) and the service's commissioning (the new version is stored under `history/`, promoted later).
Either way the model file is the same graph with the new manifest embedded in its metadata, the manifest's
`history` lists every earlier version (oldest first), and the files are written and loaded as the engine
loads them in a temporary folder beside their destination before anything is moved; nothing changes on
any error.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx

from service.engine import EngineOptions, ModelLoadError
from service.engine.loading import load_model
from service.lifecycle.calibration import Calibration
from service.lifecycle.versions import HISTORY_DIR, LifecycleError
from service.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    SCHEMA_VERSION,
    Manifest,
    manifest_to_metadata,
    sha256_file,
    write_manifest_json,
)


class VersionWriteError(LifecycleError):
    """The new version cannot be written: its place is taken, or it does not load."""


def next_version(manifest: Manifest, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """The version after `manifest.version`: 3 after 2; v1-cal2 after v1 with one earlier calibration; the
    first of those not in `taken` (the versions the folder already stores)."""
    old = manifest.version
    step = 1
    while True:
        name = str(int(old) + step) if old.isdigit() else f"{old}-cal{len(manifest.history) + step}"
        if name not in taken and name != old:
            return name
        step += 1


def new_manifest(
    old: Manifest,
    old_sha256: str,
    calibration: Calibration,
    version: str,
    min_area: float | None,
    note: str,
    min_length: float | None = None,
) -> Manifest:
    """The next version's manifest: the new calibration, the old version in its history, and the size rules
    given (None: the old manifest's stays)."""
    data = old.model_dump(mode="json")
    history = [
        *data.get("history", []),
        {
            "version": old.version,
            "created": data["created"],
            "onnx_sha256": old_sha256,
            "threshold": old.threshold.value,
            "pixel_threshold": old.pixel_threshold,
            "calibration_method": old.threshold.method,
            "note": note,
        },
    ]
    data.pop("review_band", None)  # the new calibration's band, or none: never the one of the old threshold
    data.update(
        schema_version=SCHEMA_VERSION,
        version=version,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        history=history,
        **calibration.manifest_fields(),
    )
    if min_area is not None:
        data["min_defect_area_mm2"] = min_area
    if min_length is not None:
        data["min_defect_length_mm"] = min_length
    return Manifest.model_validate(data)


def check_loads(folder: Path) -> None:
    """Load `folder` as the engine loads a model (sha256, embedded manifest, inputs and outputs); raises
    VersionWriteError with the engine's reason."""
    options = EngineOptions(models_dir=folder.parent, default_model=folder.name, providers="cpu", decode_threads=0)
    try:
        load_model(options, folder.name)
    except ModelLoadError as exc:
        raise VersionWriteError(f"the new version does not load: {exc}") from exc


@contextmanager
def staged_version(folder: Path, manifest: Manifest) -> Iterator[Path]:
    """A temporary folder inside `folder` holding the new version's model file (the active graph with
    `manifest` embedded) and manifest.json, checked to load; removed on exit unless moved away."""
    with tempfile.TemporaryDirectory(prefix=".calibrate-", dir=folder) as tmp:
        staged = Path(tmp)
        proto = onnx.load(str(folder / MODEL_FILE))
        onnx.helper.set_model_props(proto, manifest_to_metadata(manifest))
        onnx.save(proto, str(staged / MODEL_FILE))
        write_manifest_json(manifest, staged, sha256_file(staged / MODEL_FILE))
        check_loads(staged)
        yield staged


def write_version(folder: Path, old: Manifest, manifest: Manifest) -> Path:
    """Archive the current files (version `old`) under history/<version>/, then put the new version in place
    (what `training calibrate` does). Returns the archive folder."""
    archive = folder / HISTORY_DIR / old.version
    if archive.exists():
        raise VersionWriteError(f"{archive} already exists: the model's version {old.version!r} was archived "
                                "before; restore or remove it, or pass a different --version")  # fmt: skip
    with staged_version(folder, manifest) as staged:
        archive.mkdir(parents=True)
        for name in (MODEL_FILE, MANIFEST_FILE):
            shutil.copy2(folder / name, archive / name)
        os.replace(staged / MODEL_FILE, folder / MODEL_FILE)
        os.replace(staged / MANIFEST_FILE, folder / MANIFEST_FILE)
    return archive


def store_version(folder: Path, manifest: Manifest) -> Path:
    """Store the new version under history/<version>/ beside the active one, which stays active (a
    promotion makes the new one active). Returns the stored folder."""
    target = folder / HISTORY_DIR / manifest.version
    if target.exists():
        raise VersionWriteError(f"{target} already exists: version {manifest.version!r} is stored already")
    with staged_version(folder, manifest) as staged:
        target.parent.mkdir(exist_ok=True)
        os.replace(staged, target)
        # TemporaryDirectory's clean-up expects its folder: leave an empty one for it to remove.
        staged.mkdir()
    return target
