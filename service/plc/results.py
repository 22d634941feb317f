"""One result as the PLC sees it: the pushed payload (service.records.store.DecisionRecord.payload) read
into the fields of OPC 40100-1's ResultDataType and ResultReadyEventType, plus our verdict and measures."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# OPC 40100-1 ResultStateDataType: 1 = Completed ("processing was carried out correctly"). The value
# describes the processing, not the part: the verdict travels in `Verdict` beside it.
RESULT_STATE_COMPLETED = 1
# The verdict as a number as well, for PLCs that compare integers more easily than strings.
VERDICT_CODES = {"ok": 1, "review": 2, "ng": 3}


class PayloadError(ValueError):
    """An outbox payload that does not describe a result (a bug or a hand-edited row)."""


@dataclass(frozen=True)
class PlcResult:
    """A recorded prediction, ready to be announced. Areas in mm², lengths in mm, times in ms; 0.0 when the
    model gives no physical measure or no region."""

    result_id: str  # the request id: unique, and the key of GET /v1/results/{request_id}
    model: str
    part_id: str
    meas_id: str
    external_recipe_id: str
    internal_recipe_id: str
    verdict: str  # "ok", "review" or "ng"
    is_anomalous: bool
    score: float
    threshold: float
    largest_area_mm2: float
    largest_length_mm: float
    processing_time_ms: float
    creation_time: datetime

    @property
    def verdict_code(self) -> int:
        return VERDICT_CODES[self.verdict]


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _largest(regions: list[dict[str, Any]], key: str) -> float:
    values = [float(r[key]) for r in regions if isinstance(r, dict) and r.get(key) is not None]
    return max(values, default=0.0)


def _recipe_ids(payload: dict[str, Any]) -> tuple[str, str]:
    """(ExternalRecipeId, InternalRecipeId). External: the recipe id the line chose. Internal: ours, unique
    per content: the recipe with its version, else the model with its version (a result without a recipe
    was still produced by exactly one model version)."""
    recipe = payload.get("recipe")
    if isinstance(recipe, dict) and recipe.get("id"):
        version = recipe.get("version")
        return str(recipe["id"]), f"{recipe['id']}@{version}" if version is not None else str(recipe["id"])
    if isinstance(recipe, str) and recipe:
        return recipe, recipe
    model = payload["model"]
    return "", f"{model['name']}@{model['version']}"


def parse_result(payload: str) -> PlcResult:
    """The result in an outbox payload (JSON text); PayloadError naming what is missing or wrong."""
    try:
        data = json.loads(payload)
        is_anomalous = bool(data["is_anomalous"])
        verdict = str(data.get("verdict") or ("ng" if is_anomalous else "ok"))
        if verdict not in VERDICT_CODES:
            raise PayloadError(f"verdict {verdict!r} is none of {sorted(VERDICT_CODES)}")
        regions = data.get("regions") or []
        external, internal = _recipe_ids(data)
        created = datetime.fromisoformat(data["created"])
        return PlcResult(
            result_id=str(data["request_id"]),
            model=str(data["model"]["name"]),
            part_id=_text(data.get("part_id")),
            meas_id=_text(data.get("meas_id")),
            external_recipe_id=external,
            internal_recipe_id=internal,
            verdict=verdict,
            is_anomalous=is_anomalous,
            score=float(data["score"]),
            threshold=float(data["threshold"]),
            largest_area_mm2=_largest(regions, "area_mm2"),
            largest_length_mm=_largest(regions, "length_mm"),
            processing_time_ms=float((data.get("timings_ms") or {}).get("total", 0.0)),
            creation_time=created if created.tzinfo else created.replace(tzinfo=UTC),
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, PayloadError):
            raise
        raise PayloadError(f"not a result payload: {type(exc).__name__}: {exc}") from exc
