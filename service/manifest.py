"""The model manifest: one schema, embedded in the ONNX metadata and written beside it as manifest.json.

Unknown fields are refused (`extra="forbid"`) at every level except the free dicts `metrics` and
`training`: a misspelt key ("treshold") must fail loudly rather than be dropped, and a manifest from a
newer exporter must be refused by an older service instead of being half understood. Adding a field
therefore bumps `SCHEMA_VERSION`, and the service says which versions it reads (`READABLE_SCHEMA_VERSIONS`,
with what each one holds). A manifest is written back as the schema it was read as; new ones are written
as `SCHEMA_VERSION`.

`preprocessing` is the model's `PreprocessConfig`, stored as its `to_dict()` (with `version`); reading it
back runs `PreprocessConfig.from_dict`, the one place that checks the preprocessing version. The model
input side S lives in it only; the JSON also carries it as the top-level `image_size` (written from the
config, checked against it when read), so every manifest written before stays readable and the same.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from service.preprocessing import ConfigError, PreprocessConfig

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4
# The schemas this service reads:
# 1: none of `LATER_FIELDS` (reads as an fp32 model without calibration, pixel threshold or area rule).
# 2: written by two exporters, each adding its own optional fields to schema 1: `calibration`,
#    `pixel_threshold`, `min_defect_area_mm2` and `history` (calibration), `precision` and `precision_check`
#    (reduced-precision exports). A schema-2 manifest may hold either set, or both.
# 3: the same fields as schema 2, one number for all of them: what `training export` and `calibrate` write;
#    and the optional `min_defect_length_mm` (a schema-3 manifest without it has no length rule).
# 4: schema 3 and the optional `review_band` (without it: two outcomes, OK and NG).
READABLE_SCHEMA_VERSIONS = (1, 2, 3, 4)
# The fields schema 1 has not got.
LATER_FIELDS = (
    "precision",
    "precision_check",
    "calibration",
    "pixel_threshold",
    "min_defect_area_mm2",
    "min_defect_length_mm",
    "history",
    "review_band",
)
# Fields added after schema 2, and the first schema that has each: an older manifest holding one is refused.
FIELD_SINCE = {"review_band": 4}
METADATA_KEY = "bridgenet_manifest"
MODEL_FILE = "model.onnx"  # the exported graph in a model folder (training.export writes it)
MANIFEST_FILE = "manifest.json"
_SHA256 = re.compile(r"[0-9a-f]{64}")

# A dimension of a tensor shape: a fixed size, or "batch" for the dynamic leading axis.
Dim = int | Literal["batch"]


class ManifestError(ValueError):
    """A model directory, manifest file or embedded manifest that cannot be served; the message names it."""


def _read_preprocessing(value: Any) -> PreprocessConfig:
    if isinstance(value, PreprocessConfig):
        return value
    if not isinstance(value, Mapping) or not isinstance(value.get("version"), str):
        raise ValueError(f"expected PreprocessConfig.to_dict() with a 'version' string, got {value!r}")
    try:
        return PreprocessConfig.from_dict(dict(value))
    except ConfigError as exc:  # the version check and the field checks
        raise ValueError(f"preprocessing config is invalid: {exc}") from exc


# A PreprocessConfig in Python, its `to_dict()` (with `version`) in JSON.
Preprocessing = Annotated[
    PreprocessConfig,
    PlainValidator(_read_preprocessing),
    PlainSerializer(lambda config: config.to_dict(), return_type=dict[str, Any]),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Threshold(_Strict):
    """The image-score threshold in effect by default (NG iff score > value) and how it was chosen."""

    value: float
    method: str = Field(min_length=1, examples=["validation_good_false_reject_rate"])
    target_false_reject_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    n_parts: int = Field(ge=0, description="good validation parts the threshold was calibrated on")


class ScoreStats(_Strict):
    """Raw image scores of the good validation parts: the reference for spotting drift in production."""

    n: int = Field(ge=1)
    mean: float
    std: float = Field(ge=0.0)
    min: float
    max: float
    p50: float
    p95: float
    p99: float

    @model_validator(mode="after")
    def _ordered(self) -> ScoreStats:
        values = [self.min, self.p50, self.p95, self.p99, self.max]
        slack = 1e-9 * max(1.0, abs(self.min), abs(self.max))  # percentile interpolation rounds
        if any(b < a - slack for a, b in itertools.pairwise(values)):
            raise ValueError(f"expected min ≤ p50 ≤ p95 ≤ p99 ≤ max, got {values}")
        return self


class Calibration(_Strict):
    """How the thresholds were calibrated and what they are expected to do (optional; not in schema 1)."""

    method: str = Field(min_length=1, examples=["normal_prediction"])
    source: str = Field(min_length=1, description="where the good parts came from")
    n_parts: int = Field(ge=1)
    target_false_reject_rate: float = Field(gt=0.0, lt=1.0)
    confidence: float | None = Field(default=None, gt=0.0, lt=1.0)
    inputs: dict[str, Any] = Field(description="the fit's inputs: n, mean, std, logit_mean, logit_std, ...")
    expected_false_reject_rate: float = Field(ge=0.0, le=1.0, description="on unseen good parts, under the fit")
    false_reject_rate_interval: tuple[float, float] = Field(description="90 % interval of that rate")
    distribution_free_upper_bound: float = Field(
        ge=0.0, le=1.0, description="one-sided 95 % bound on the rate from the calibration parts alone"
    )
    pixel: dict[str, Any] = Field(default_factory=dict, description="the pixel threshold's method and inputs")


class ReviewBand(_Strict):
    """The review band's upper edge: a part the threshold rejects answers REVIEW (a person decides) while its
    score is at most `upper`, NG above it. The lower edge is the threshold in effect."""

    upper: float = Field(description="scores above the threshold and at most this answer REVIEW")
    method: str = Field(min_length=1, examples=["normal_tolerance"])
    target_false_reject_rate: float = Field(
        gt=0.0, lt=1.0, description="share of good parts the upper edge may reject (NG without a review)"
    )
    expected_false_reject_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    expected_review_rate: float | None = Field(
        default=None, ge=0.0, le=1.0, description="share of good parts expected in the band, under the fit"
    )


class HistoryEntry(_Strict):
    """An earlier version of the same model folder (kept under `history/<version>/`)."""

    version: str = Field(min_length=1)
    created: AwareDatetime
    onnx_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    threshold: float
    pixel_threshold: float | None = None
    calibration_method: str
    note: str = ""


class Manifest(_Strict):
    """Everything the service needs to know about one exported model, and how it was made."""

    schema_version: int = SCHEMA_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    version: str = Field(min_length=1)
    created: AwareDatetime
    git_sha: str | None = Field(description="commit the exporter ran from; 'unknown' or null outside git")
    category: str = Field(min_length=1)
    # The branch(es) the model was trained with. The graph always takes both inputs (see `inputs`).
    modality: Literal["rgb", "depth", "both"]
    backbone: str = Field(min_length=1)
    feature_dim: int = Field(ge=1)
    inputs: dict[str, list[Dim]]
    outputs: dict[str, list[Dim]]
    opset: int = Field(ge=1)
    preprocessing: Preprocessing = Field(description="PreprocessConfig.to_dict(), including 'version'")
    threshold: Threshold
    score_stats: ScoreStats
    metrics: dict[str, float] = Field(default_factory=dict, description="evaluation numbers, e.g. i_auroc")
    selection: str = Field(min_length=1, description="how the checkpoint was chosen")
    training: dict[str, Any] = Field(default_factory=dict, description="training settings: epochs, seed, ...")
    # Not in schema 1 (`LATER_FIELDS`), all optional so that schema-1 models load unchanged.
    # The numeric precision of the graph and, for fp16/int8, how it was made and checked against fp32.
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    precision_check: dict[str, Any] = Field(
        default_factory=dict, description="calibration data and the comparison with the fp32 graph (fp16, int8)"
    )
    calibration: Calibration | None = None
    pixel_threshold: float | None = Field(
        default=None, description="anomaly-map value above which a pixel belongs to a defect region"
    )
    min_defect_area_mm2: float | None = Field(
        default=None, gt=0.0, description="area rule: NG only with a region at least this large (None: off)"
    )
    min_defect_length_mm: float | None = Field(
        default=None,
        gt=0.0,
        description="length rule: NG only with a region at least this long, mm (None: off); with the area rule "
        "too, a region meeting either minimum makes a part NG",
    )
    history: list[HistoryEntry] = Field(default_factory=list, description="earlier versions, oldest first")
    review_band: ReviewBand | None = Field(
        default=None, description="OK / REVIEW / NG: the band above the threshold where a person decides (None: off)"
    )

    @property
    def image_size(self) -> int:
        """Model input side S in pixels."""
        return self.preprocessing.image_size

    @model_validator(mode="before")
    @classmethod
    def _known_schema(cls, data: Any) -> Any:
        # Checked before the fields, so a newer manifest gets this message, not a list of unknown fields.
        if isinstance(data, Mapping) and data.get("schema_version", SCHEMA_VERSION) not in READABLE_SCHEMA_VERSIONS:
            raise ValueError(
                f"schema_version {data['schema_version']!r} is not supported: this service reads manifest "
                f"schema {', '.join(map(str, READABLE_SCHEMA_VERSIONS))}; upgrade the service or re-export the model"
            )
        if isinstance(data, Mapping) and data.get("schema_version") == 1:
            # Absent, or at its default: a schema-1 manifest read and written by an earlier service of
            # schema 2 may carry `"calibration": null` and the like.
            newer = [
                k
                for k in LATER_FIELDS
                if k in data and data[k] != cls.model_fields[k].get_default(call_default_factory=True)
            ]
            if newer:
                raise ValueError(f"schema_version 1 has no field {', '.join(newer)} (added in schema 2)")
        if isinstance(data, Mapping):
            version = data.get("schema_version", SCHEMA_VERSION)
            later = [k for k, since in FIELD_SINCE.items() if data.get(k) is not None and version < since]
            if later:
                raise ValueError(
                    f"schema_version {version} has no field {', '.join(later)} "
                    f"(added in schema {', '.join(str(FIELD_SINCE[k]) for k in later)})"
                )
        if not isinstance(data, Mapping):
            return data  # pydantic names the type
        if "image_size" not in data:
            raise ValueError("image_size: Field required (the model input side S in pixels)")
        # The top-level image_size of the JSON repeats preprocessing.image_size: checked, then dropped.
        data = dict(data)
        size = data.pop("image_size")
        pre = data.get("preprocessing")
        if isinstance(pre, Mapping) and "image_size" not in pre:
            data["preprocessing"] = pre = {**pre, "image_size": size}
        if isinstance(pre, PreprocessConfig):
            pre_size = pre.image_size
        elif isinstance(pre, Mapping):
            pre_size = pre["image_size"]
        else:
            return data  # the preprocessing field's validator names what is wrong with it
        if pre_size != size:
            raise ValueError(f"preprocessing.image_size {pre_size!r} differs from image_size {size!r}")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        s = self.image_size
        _check_tensors("inputs", self.inputs, {"rgb": [3, s, s], "depth": [3, s, s]})
        _check_tensors("outputs", self.outputs, {"scores": [], "maps": [s, s]})
        if self.review_band is not None and not self.review_band.upper > self.threshold.value:
            raise ValueError(
                f"review_band.upper {self.review_band.upper} must be above threshold.value {self.threshold.value} "
                "(the band's lower edge)"
            )
        return self

    @model_serializer(mode="wrap")
    def _with_image_size(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # The JSON format keeps image_size where it always was, right after backbone.
        out: dict[str, Any] = {}
        for key, value in handler(self).items():
            if self.schema_version == 1 and key in LATER_FIELDS:
                continue  # a schema-1 manifest writes back as it was read
            if self.schema_version < FIELD_SINCE.get(key, 0):
                continue  # likewise an older manifest, without the fields added since
            out[key] = value
            if key == "backbone":
                out["image_size"] = self.image_size
        return out


def _check_tensors(kind: str, tensors: dict[str, list[Dim]], expected: dict[str, list[int]]) -> None:
    """Names must be exactly `expected`; each shape is [batch, *expected[name]] (batch: "batch" or ≥ 1)."""
    if set(tensors) != set(expected):
        raise ValueError(f"{kind} are {sorted(tensors)}; expected {sorted(expected)}")
    for name, shape in tensors.items():
        lead, tail = (shape[0], shape[1:]) if shape else (None, [])
        if not (lead == "batch" or (isinstance(lead, int) and lead >= 1)) or tail != expected[name]:
            raise ValueError(f"{kind}.{name} has shape {shape}; expected {['batch', *expected[name]]}")


def _describe(exc: ValidationError) -> str:
    """pydantic's errors as one line each: 'threshold.value: Input should be a finite number (got nan)'."""
    lines = []
    for error in exc.errors()[:10]:
        where = ".".join(str(part) for part in error["loc"]) or "manifest"
        got = error.get("input")
        shown = "" if isinstance(got, dict | list) else f" (got {repr(got)[:60]})"
        lines.append(f"{where}: {error['msg']}{shown}")
    more = exc.error_count() - len(lines)
    return "; ".join(lines) + (f"; and {more} more" if more > 0 else "")


def parse_manifest(data: Mapping[str, Any], source: str) -> Manifest:
    """Validate a decoded manifest; `source` names where it came from in the error message."""
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(f"{source} is not a valid manifest: {_describe(exc)}") from exc


def manifest_to_metadata(m: Manifest) -> dict[str, str]:
    """The ONNX metadata map entries (`onnx.helper.set_model_props`) that embed the manifest."""
    return {METADATA_KEY: m.model_dump_json()}


def manifest_from_metadata(meta: Mapping[str, str], source: str = "the ONNX metadata") -> Manifest:
    """Inverse of `manifest_to_metadata`; `meta` is onnxruntime's `get_modelmeta().custom_metadata_map`."""
    if METADATA_KEY not in meta:
        raise ManifestError(
            f"{source} has no {METADATA_KEY!r} entry (keys: {sorted(meta)}): the model was not exported "
            "by `python -m training export`, or its metadata was stripped"
        )
    try:
        data = json.loads(meta[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{source}: the {METADATA_KEY!r} entry is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: the {METADATA_KEY!r} entry holds a JSON {type(data).__name__}, not an object")
    return parse_manifest(data, f"the manifest embedded in {source}")


def sha256_file(path: Path | str) -> str:
    """Hex SHA-256 of a file, read in chunks (model files can be hundreds of MB)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest_json(m: Manifest, model_dir: Path | str, onnx_sha256: str) -> Path:
    """Write `model_dir/manifest.json`: the manifest plus the model file's `onnx_sha256`. Returns the path.

    Written to a temporary file and renamed, so a reader never sees half a manifest.
    """
    if not _SHA256.fullmatch(onnx_sha256):
        raise ManifestError(f"onnx_sha256 must be 64 lowercase hex digits, got {onnx_sha256!r}")
    path = Path(model_dir) / MANIFEST_FILE
    payload = {**m.model_dump(mode="json"), "onnx_sha256": onnx_sha256}
    tmp = path.with_name(f".{MANIFEST_FILE}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_json_object(path: Path, error: type[ValueError] = ManifestError) -> dict[str, Any]:
    """The JSON object in `path`; `error` (a ManifestError unless given) naming the file when it cannot be
    read, is not JSON, or holds something else than an object. Recipe files are read the same way."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise error(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path} cannot be read: {exc}") from exc
    if not isinstance(data, dict):
        raise error(f"{path} holds a JSON {type(data).__name__}; expected an object")
    return data


def _differences(a: Manifest, b: Manifest) -> list[str]:
    left, right = a.model_dump(mode="json"), b.model_dump(mode="json")
    return [key for key in left if left[key] != right[key]]


def load_model_dir(model_dir: Path | str, embedded: Mapping[str, str]) -> Manifest:
    """Verify a model directory and return its manifest; raise ManifestError naming the file and the fault.

    Checks, in order: `model.onnx` and `manifest.json` exist; the JSON parses and is a valid manifest with
    an `onnx_sha256`; the model file's SHA-256 matches it; the manifest embedded in the ONNX metadata
    (`embedded`, the session's `custom_metadata_map`) equals the JSON one. Parsing the manifest loads its
    preprocessing config, which refuses a preprocessing version other than the one this code implements.
    The service does the same in two steps around its own single read of the model file
    (`verify_model_bytes` before ONNX Runtime sees the bytes, `check_embedded` after).
    """
    folder = Path(model_dir)
    onnx_path = folder / MODEL_FILE
    if not onnx_path.is_file():
        read_manifest_json(folder)  # names the missing folder or file the same way
    manifest, _ = verify_model_bytes(folder, onnx_path.read_bytes())
    check_embedded(folder, manifest, embedded)
    return manifest


def read_manifest_json(model_dir: Path | str) -> tuple[Manifest, str]:
    """The folder's `manifest.json` and the `onnx_sha256` it records; ManifestError naming the fault."""
    folder = Path(model_dir)
    onnx_path, json_path = folder / MODEL_FILE, folder / MANIFEST_FILE
    if not folder.is_dir():
        raise ManifestError(f"model directory {folder} does not exist")
    for path in (onnx_path, json_path):
        if not path.is_file():
            raise ManifestError(f"{path} not found: a model directory holds {MODEL_FILE} and {MANIFEST_FILE}")
    data = read_json_object(json_path)
    recorded = data.pop("onnx_sha256", None)
    if not isinstance(recorded, str) or not _SHA256.fullmatch(recorded):
        raise ManifestError(f"{json_path}: onnx_sha256 is {recorded!r}; expected 64 lowercase hex digits")
    return parse_manifest(data, str(json_path)), recorded


def verify_model_bytes(model_dir: Path | str, model_bytes: bytes) -> tuple[Manifest, str]:
    """The folder's manifest and the model file's SHA-256, once the SHA-256 of `model_bytes` (the file, as
    read) matches the one the manifest records: nothing parses a model file that is not the one its manifest
    was written for."""
    folder = Path(model_dir)
    manifest, recorded = read_manifest_json(folder)
    actual = hashlib.sha256(model_bytes).hexdigest()
    if actual != recorded:
        raise ManifestError(
            f"{folder / MODEL_FILE} sha256 {actual[:12]}… does not match {MANIFEST_FILE} ({recorded[:12]}…): "
            "the file is corrupt or was replaced"
        )
    log.info("verified %s (sha256 %s…, manifest %s %s)", folder, actual[:12], manifest.name, manifest.version)
    return manifest, actual


def check_embedded(model_dir: Path | str, manifest: Manifest, embedded: Mapping[str, str]) -> None:
    """The manifest embedded in the ONNX metadata must equal the folder's JSON one."""
    onnx_path = Path(model_dir) / MODEL_FILE
    inner = manifest_from_metadata(embedded, str(onnx_path))
    differing = _differences(manifest, inner)
    if differing:
        raise ManifestError(
            f"the manifest embedded in {onnx_path} differs from {MANIFEST_FILE} in {differing}: "
            "one of them was edited, or they come from different exports"
        )
