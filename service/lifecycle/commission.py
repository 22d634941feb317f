"""Commissioning: a calibration proposal from the parts a line recorded and what its staff said about them.

The good sample is the parts answered OK in the window plus the NG parts whose latest review says
"false_reject"; the defect sample is the parts whose latest review says "confirmed". Their scores come from
the records: nothing is scored again. Only the active version's parts count (matched by the model file's
sha256): another version's scores are on another scale, so a window that mixes versions gets a warning
saying how many parts were left out. A good sample that holds a part later reviewed as a missed defect is
refused: the threshold would be fitted to a defect.

The pixel threshold stays the active version's: the records keep each part's defect-area share and
regions, and anomaly maps only for archived parts (by default the NG ones), so the OK parts' map maxima,
which the pixel rule needs, are not there.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine

from service.lifecycle.calibration import Calibration
from service.lifecycle.promotion import Switch
from service.lifecycle.rate import check_false_reject_rate
from service.lifecycle.thresholds import (
    DEFAULT_CONFIDENCE,
    REVIEW_RATE,
    CalibrationInputError,
    Method,
    binomial_upper_bound,
    calibration_from,
    estimate,
    review_band,
)
from service.lifecycle.versions import (
    LifecycleError,
    VersionConflictError,
    active_version,
    other_versions,
    read_version,
)
from service.lifecycle.writing import new_manifest, next_version, store_version
from service.manifest import Manifest, read_manifest_json
from service.records.reviews import ScoredPart, scored_parts
from service.records.store import ResultFilter

# The methods a line's records can feed: synthetic_margin needs a training run's synthetic anomalies.
LINE_METHODS: tuple[Method, ...] = ("normal_tolerance", "normal_prediction", "gumbel_tolerance", "empirical")
MAX_WINDOW_PARTS = 100_000  # newest parts read for one proposal; far more than a calibration needs
HISTOGRAM_BINS = 40
PROPOSALS_KEPT = 32
PROPOSAL_TTL_S = 3600.0
SHOWN_IDS = 10


class CommissionError(LifecycleError):
    """A proposal the records cannot support; subclasses say why."""


class TooFewPartsError(CommissionError):
    """Fewer good parts than the minimum."""


class ContaminatedSampleError(CommissionError):
    """The good sample holds parts reviewed as defects."""


class ProposalNotFoundError(CommissionError):
    """No proposal under that id (expired, or made by another replica)."""


@dataclass(frozen=True)
class Window:
    """Which recorded parts: received in [start, end), and of those the newest `last` (None: all)."""

    start: datetime | None = None
    end: datetime | None = None
    last: int | None = None


@dataclass(frozen=True)
class LineSample:
    """The window's parts of the active version, split by what is known about them (scores (N,) float64)."""

    good: np.ndarray
    defects: np.ndarray
    answered_ok: int
    false_rejects: int
    unreviewed_ng: int
    other_versions: dict[str, int]  # version → parts of it in the window, left out
    first: datetime | None
    last: datetime | None


def line_sample(db_engine: Engine, model: str, active_sha256: str, window: Window, min_parts: int) -> LineSample:
    """Read the window's parts and split them; ContaminatedSampleError when an OK part of the active version
    was later reviewed as a missed defect, TooFewPartsError below `min_parts` good parts."""
    limit = min(window.last or MAX_WINDOW_PARTS, MAX_WINDOW_PARTS)
    parts = scored_parts(db_engine, ResultFilter(model=model, since=window.start, until=window.end), limit=limit)
    active = [p for p in parts if p.model_sha256 == active_sha256]
    others: dict[str, int] = {}
    for p in parts:
        if p.model_sha256 != active_sha256:
            key = f"{p.model_version} ({p.model_sha256[:12]})"
            others[key] = others.get(key, 0) + 1
    missed = [p.request_id for p in active if p.outcome == "missed_defect"]
    if missed:
        raise ContaminatedSampleError(
            f"{len(missed)} part(s) answered OK in the window were reviewed as missed defects, e.g. "
            f"{', '.join(missed[:SHOWN_IDS])}: the good sample would hold defects. Choose a window without them "
            "(or review them again if the review was wrong)"
        )
    ok = [p for p in active if not p.is_anomalous]
    false_rejects = [p for p in active if p.is_anomalous and p.outcome == "false_reject"]
    confirmed = [p for p in active if p.is_anomalous and p.outcome == "confirmed"]
    good = _scores(ok + false_rejects)
    if good.size < min_parts:
        left_out = f"; {sum(others.values())} part(s) of other versions left out" if others else ""
        raise TooFewPartsError(
            f"{good.size} good part(s) of the active version in the window ({len(ok)} answered OK, "
            f"{len(false_rejects)} reviewed false rejects{left_out}); a calibration from the line needs at "
            f"least {min_parts} (BRIDGENET_COMMISSION_MIN_PARTS)"
        )
    when = [p.received_at for p in active]
    return LineSample(
        good=good,
        defects=_scores(confirmed),
        answered_ok=len(ok),
        false_rejects=len(false_rejects),
        unreviewed_ng=sum(1 for p in active if p.is_anomalous and p.outcome is None),
        other_versions=others,
        first=min(when) if when else None,
        last=max(when) if when else None,
    )


def _scores(parts: list[ScoredPart]) -> np.ndarray:
    return np.array([p.score for p in parts], dtype=np.float64)


def figures(threshold: float, sample: LineSample) -> dict[str, Any]:
    """What a threshold does on the line's own sample: good parts above it (with the one-sided 95 %
    Clopper-Pearson bound that count supports) and confirmed defects above it."""
    above = int((sample.good > threshold).sum())
    caught = int((sample.defects > threshold).sum())
    n_defects = int(sample.defects.size)
    return {
        "threshold": threshold,
        "good_above": above,
        "observed_false_reject_rate": above / sample.good.size,
        "distribution_free_upper_bound": binomial_upper_bound(above, int(sample.good.size)),
        "defects_detected": caught,
        "detection_rate": caught / n_defects if n_defects else None,
    }


def calibration_from_line(
    sample: LineSample, active: Manifest, *, method: Method, rate: float, confidence: float, source: str
) -> Calibration:
    """The image threshold by `method` on the good sample; the pixel threshold and its record are the
    active version's (see the module docstring)."""
    if method not in LINE_METHODS:
        raise CalibrationInputError(
            f"method {method!r}: a calibration from the line uses one of {', '.join(LINE_METHODS)}"
        )
    check_false_reject_rate(rate)
    if not (0.5 <= confidence < 1.0):
        raise CalibrationInputError(f"confidence must be in [0.5, 1), got {confidence}")
    image = estimate(method, sample.good, rate, confidence)
    kept = f"kept from version {active.version}: the records hold no anomaly maps of OK parts"
    pixel = dict(active.calibration.pixel) if active.calibration is not None and active.calibration.pixel else {}
    return calibration_from(
        image,
        sample.good,
        source=source,
        pixel_threshold=active.pixel_threshold,
        pixel={**pixel, "note": kept},
        review_band=review_band(image, method, sample.good, rate, REVIEW_RATE, confidence),
    )


def histogram(sample: LineSample, thresholds: list[float]) -> dict[str, Any]:
    """Both samples' score counts over shared bins spanning them and the thresholds (what the page plots)."""
    values = np.concatenate([sample.good, sample.defects, np.asarray(thresholds, np.float64)])
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        lo, hi = lo - 0.01, hi + 0.01
    pad = (hi - lo) * 0.02
    edges = np.linspace(lo - pad, hi + pad, HISTOGRAM_BINS + 1)
    return {
        "edges": [float(e) for e in edges],
        "good": [int(c) for c in np.histogram(sample.good, edges)[0]],
        "defects": [int(c) for c in np.histogram(sample.defects, edges)[0]],
    }


@dataclass(frozen=True)
class Proposal:
    """A calibration proposed from the line's records, kept until saved or expired."""

    id: str
    model: str
    created: datetime
    active_version: str
    active_sha256: str
    calibration: Calibration
    answer: dict[str, Any]  # what the API answers (and the page shows)


def propose(
    db_engine: Engine,
    model: str,
    active: Manifest,
    active_sha256: str,
    window: Window,
    *,
    method: Method,
    rate: float,
    confidence: float = DEFAULT_CONFIDENCE,
    min_parts: int,
) -> Proposal:
    """Build the proposal for `model` (whose active version is `active`) from the window's records."""
    sample = line_sample(db_engine, model, active_sha256, window, min_parts)
    source = f"{sample.good.size} good line parts recorded {_span(sample)}"
    calibration = calibration_from_line(sample, active, method=method, rate=rate, confidence=confidence, source=source)
    warnings = []
    if sample.other_versions:
        listed = ", ".join(f"{n} of {v}" for v, n in sorted(sample.other_versions.items()))
        warnings.append(
            f"the window mixes model versions: only the active version {active.version}'s parts are used; left "
            f"out: {listed}"
        )
    if sample.unreviewed_ng:
        warnings.append(
            f"{sample.unreviewed_ng} NG part(s) in the window are not reviewed and are left out of both samples; "
            "good ones among them are the highest good scores, so the threshold may come out low: review them first"
        )
    if sample.defects.size == 0:
        warnings.append("no confirmed defects in the window: the detection cannot be measured")
    active_cal = active.calibration
    answer = {
        "model": model,
        "window": {
            "start": _iso(sample.first),
            "end": _iso(sample.last),
            "parts_of_active_version": sample.answered_ok
            + sample.false_rejects
            + int(sample.defects.size)
            + sample.unreviewed_ng,
        },
        "good_sample": {
            "n": int(sample.good.size),
            "answered_ok": sample.answered_ok,
            "false_rejects": sample.false_rejects,
        },
        "defect_sample": {"n": int(sample.defects.size)},
        "proposed": {
            "method": calibration.method,
            "threshold": calibration.threshold,
            "pixel_threshold": calibration.pixel_threshold,
            "pixel_threshold_source": f"kept from the active version {active.version}",
            "n_parts": calibration.n_parts,
            "target_false_reject_rate": rate,
            "confidence": calibration.confidence,
            "expected_false_reject_rate": calibration.expected_false_reject_rate,
            "false_reject_rate_interval": list(calibration.false_reject_rate_interval or ()),
            "distribution_free_upper_bound": calibration.distribution_free_upper_bound,
            "on_the_line": figures(calibration.threshold, sample),
        },
        "active": {
            "version": active.version,
            "method": active_cal.method if active_cal is not None else active.threshold.method,
            "threshold": active.threshold.value,
            "pixel_threshold": active.pixel_threshold,
            "n_parts": active_cal.n_parts if active_cal is not None else active.threshold.n_parts,
            "target_false_reject_rate": active.threshold.target_false_reject_rate,
            "expected_false_reject_rate": active_cal.expected_false_reject_rate if active_cal else None,
            "false_reject_rate_interval": list(active_cal.false_reject_rate_interval) if active_cal else None,
            "distribution_free_upper_bound": active_cal.distribution_free_upper_bound if active_cal else None,
            "on_the_line": figures(active.threshold.value, sample),
        },
        "histogram": histogram(sample, [calibration.threshold, active.threshold.value]),
        "warnings": warnings,
    }
    proposal = Proposal(uuid.uuid4().hex, model, datetime.now(UTC), active.version, active_sha256, calibration, {})
    return replace(proposal, answer={"id": proposal.id, "created": proposal.created.isoformat(), **answer})


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _span(sample: LineSample) -> str:
    if sample.first is None or sample.last is None:
        return "in the window"
    return f"{sample.first.isoformat(timespec='seconds')} to {sample.last.isoformat(timespec='seconds')}"


@dataclass
class ProposalStore:
    """Proposals by id, in memory: the newest PROPOSALS_KEPT, each for PROPOSAL_TTL_S. A proposal is cheap
    to make again, so one lost with a restart (or made on another replica) is simply asked for again."""

    kept: int = PROPOSALS_KEPT
    ttl_s: float = PROPOSAL_TTL_S
    _items: OrderedDict[str, Proposal] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, proposal: Proposal) -> None:
        with self._lock:
            self._items[proposal.id] = proposal
            while len(self._items) > self.kept:
                self._items.popitem(last=False)

    def get(self, proposal_id: str, model: str, now: datetime | None = None) -> Proposal:
        with self._lock:
            proposal = self._items.get(proposal_id)
        age = ((now or datetime.now(UTC)) - proposal.created).total_seconds() if proposal else None
        if proposal is None or proposal.model != model or age is None or age > self.ttl_s:
            raise ProposalNotFoundError(
                f"no proposal {proposal_id!r} for model {model!r}: proposals are kept {self.ttl_s / 60:.0f} min in "
                "the replica that made them; make it again"
            )
        return proposal

    def drop(self, proposal_id: str) -> None:
        with self._lock:
            self._items.pop(proposal_id, None)


def save_proposal(folder: Path, proposal: Proposal) -> Switch:
    """Store the proposal's calibration as a new version of the model in `folder`, beside the active one (what
    `training calibrate` writes, under history/<new version>/); VersionConflictError when the active
    version is no longer the one the proposal was made for."""
    before = active_version(folder)
    if before.onnx_sha256 != proposal.active_sha256:
        raise VersionConflictError(
            f"the active version of {proposal.model!r} is {before.version!r} now, not {proposal.active_version!r} "
            "as when the proposal was made; make the proposal again"
        )
    manifest, sha = read_manifest_json(folder)
    version = next_version(manifest, {v.version for v in other_versions(folder)})
    cal = proposal.calibration
    note = (
        f"commissioned from {cal.n_parts} good line parts ({cal.method}, target false-reject rate "
        f"{cal.target_false_reject_rate})"
    )
    stored = store_version(folder, new_manifest(manifest, sha, cal, version, None, note))
    return Switch("save", before, read_version(stored))
