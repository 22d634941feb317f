"""What versions a model folder holds and which one is active.

The active version is the one at the top of the folder (`model.onnx` + `manifest.json`): that is what the
engine loads at start and on reload, and what `python -m training calibrate` re-calibrates. Earlier (or
demoted) versions sit under `history/<version>/`, as `training calibrate` archives them. So the active version
needs no pointer file: a restart serves whatever the top of the folder holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.manifest import Manifest, ManifestError, read_manifest_json

HISTORY_DIR = "history"


class LifecycleError(ValueError):
    """A version request the folder cannot satisfy; subclasses say which kind."""


class VersionNotFoundError(LifecycleError):
    """The model or the version is not in the models folder."""


class VersionConflictError(LifecycleError):
    """The request is well-formed but the folder's state refuses it (already active, nothing to roll back to)."""


@dataclass(frozen=True)
class VersionInfo:
    """One version present in a model folder: where it lives and its calibration as its manifest records it."""

    version: str
    folder: Path
    onnx_sha256: str
    created: str
    calibration: dict[str, Any]


def calibration_summary(manifest: Manifest) -> dict[str, Any]:
    """Method, n, threshold and, where the manifest has them, the promised false-reject rate and its bound."""
    cal = manifest.calibration
    summary: dict[str, Any] = {
        "method": cal.method if cal is not None else manifest.threshold.method,
        "n_parts": cal.n_parts if cal is not None else manifest.threshold.n_parts,
        "threshold": manifest.threshold.value,
        "pixel_threshold": manifest.pixel_threshold,
        "target_false_reject_rate": manifest.threshold.target_false_reject_rate,
        "expected_false_reject_rate": None,
        "false_reject_rate_interval": None,
        "distribution_free_upper_bound": None,
    }
    if cal is not None:
        summary.update(
            target_false_reject_rate=cal.target_false_reject_rate,
            expected_false_reject_rate=cal.expected_false_reject_rate,
            false_reject_rate_interval=list(cal.false_reject_rate_interval),
            distribution_free_upper_bound=cal.distribution_free_upper_bound,
        )
    return summary


def read_version(folder: Path) -> VersionInfo:
    """The version whose files are in `folder` (the model folder's top or one of its history folders)."""
    manifest, sha = read_manifest_json(folder)
    return VersionInfo(manifest.version, folder, sha, manifest.created.isoformat(), calibration_summary(manifest))


def model_folder(models_dir: Path, name: str) -> Path:
    """`models_dir/<name>`, refusing names that would leave the models folder."""
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        raise VersionNotFoundError(f"model {name!r} is not a model folder name")
    folder = models_dir / name
    if not folder.is_dir():
        raise VersionNotFoundError(f"model {name!r}: no folder {folder}")
    return folder


def active_version(folder: Path) -> VersionInfo:
    """The version at the top of the folder, the one the engine loads."""
    try:
        return read_version(folder)
    except ManifestError as exc:
        raise VersionConflictError(f"the active version of {folder.name!r} cannot be read: {exc}") from exc


def other_versions(folder: Path) -> list[VersionInfo]:
    """The versions under `history/`, by version name; a history folder that cannot be read is left out
    (it cannot be promoted either)."""
    history = folder / HISTORY_DIR
    if not history.is_dir():
        return []
    found = []
    for sub in sorted(history.iterdir()):
        if not sub.is_dir() or sub.name.startswith("."):
            continue
        try:
            found.append(read_version(sub))
        except ManifestError:
            continue
    return found


def stored_version(folder: Path, version: str) -> VersionInfo:
    """The history folder holding `version`; VersionNotFoundError names the versions there are."""
    if not version or version.startswith(".") or "/" in version or "\\" in version:
        raise VersionNotFoundError(f"version {version!r} is not a version name")
    for info in other_versions(folder):
        if info.version == version:
            return info
    present = [v.version for v in other_versions(folder)]
    raise VersionNotFoundError(f"model {folder.name!r} has no stored version {version!r}; stored: {present}")
