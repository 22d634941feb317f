"""Generate the Grafana dashboard docker/grafana/dashboards/bridgenet.json (and a sketch of its layout).

The JSON is committed and provisioned as is; this script is its source. Regenerate after an edit:

    .venv/bin/python docker/grafana/make_dashboard.py
    .venv/bin/python docker/grafana/make_dashboard.py --layout-png docs/img/dashboard-layout.png

tests/deploy/test_dashboard.py fails when the committed JSON and this script disagree.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from grafana_panels import DATASOURCE, Panel, draw_layout, panel, row, stat, target, thresholds, timeseries

DASHBOARD_PATH = Path(__file__).resolve().parent / "dashboards" / "bridgenet.json"
LATENCY_BUDGET_S = 0.1  # per-part answer budget of the line controller

MODEL = 'model=~"$model"'
# Error and request ratios count predictions only: scrapes of /metrics and health probes are 2xx noise.
PREDICT = 'endpoint=~".*predict.*"'
RATE = "$__rate_interval"
# Stat panels summarise a fixed 5 min window: steadier than the graphs' $__rate_interval.
STAT_WINDOW = "5m"


def quantile(q: float, by: str, window: str) -> str:
    """PromQL for the q-quantile of a classic histogram, `by` = 'le' or 'le, stage'."""
    metric = "bridgenet_request_duration_seconds_bucket" if by == "le" else "bridgenet_stage_duration_seconds_bucket"
    return f"histogram_quantile({q}, sum by ({by}) (rate({metric}[{window}])))"


def top_row() -> list[Panel]:
    """Six stats that tell whether the line is healthy without reading a graph."""
    w = STAT_WINDOW
    preds = f"sum(rate(bridgenet_predictions_total{{{MODEL}}}[{w}]))"
    requests = f"sum(rate(bridgenet_requests_total{{{PREDICT}}}[{w}]))"
    on_gpu = f'count(bridgenet_model_info{{{MODEL},provider=~"(?i).*(cuda|tensorrt).*"}})'
    return [
        stat(
            "Parts / s",
            (0, 0, 4, 4),
            preds,
            "reqps",
            thresholds(("red", None), ("green", 0.001)),
            description="Predictions answered per second (selected models). Red: nothing answered in 5 min.",
        ),
        stat(
            "NG rate",
            (4, 0, 4, 4),
            f'(sum(rate(bridgenet_predictions_total{{{MODEL},verdict="ng"}}[{w}])) or vector(0)) / {preds}',
            "percentunit",
            thresholds(("green", None), ("orange", 0.02), ("red", 0.05)),
            description="Share of parts judged NG over 5 min. The 2 % / 5 % colours are placeholders: set them "
            "to the line's expected defect rate.",
        ),
        stat(
            "Latency p95",
            (8, 0, 4, 4),
            answered_quantile(0.95, w),
            "s",
            thresholds(("green", None), ("orange", 0.8 * LATENCY_BUDGET_S), ("red", LATENCY_BUDGET_S)),
            decimals=3,
            description="95th percentile of the request time of answered predictions (refusals left out) "
            "over 5 min; budget 100 ms.",
        ),
        stat(
            "Error rate",
            (12, 0, 4, 4),
            f'(sum(rate(bridgenet_requests_total{{{PREDICT},status!~"2.."}}[{w}])) or vector(0)) / {requests}',
            "percentunit",
            thresholds(("green", None), ("orange", 0.01), ("red", 0.05)),
            description="Share of prediction requests answered with a non-2xx status (bad input, refusals, "
            "server errors) over 5 min.",
        ),
        stat(
            "Refusals / s",
            (16, 0, 4, 4),
            f"sum(rate(bridgenet_rejected_requests_total[{w}])) or vector(0)",
            "reqps",
            thresholds(("green", None), ("orange", 0.001), ("red", 0.1)),
            description="Requests refused with an error code (queue full, body too large, bad input, missing "
            "API key, ...): the service is overloaded or a client misbehaves. Breakdown by reason below.",
        ),
        stat(
            "Execution provider",
            (20, 0, 4, 4),
            f"({on_gpu} or vector(0)) / count(bridgenet_model_info{{{MODEL}}})",
            "percentunit",
            thresholds(("orange", None), ("green", 1)),
            graph_mode="none",
            mappings=[
                {"type": "value", "options": {"1": {"text": "GPU", "index": 0}}},
                {"type": "value", "options": {"0": {"text": "CPU", "index": 1}}},
                {"type": "range", "options": {"from": 0.0001, "to": 0.9999, "result": {"text": "mixed", "index": 2}}},
            ],
            description="Where the selected models' ONNX Runtime sessions really run (CUDA/TensorRT = GPU). "
            "Orange: on the CPU. The table at the bottom names each model's provider.",
        ),
    ]


# --- service health: up, queue depth, batch size, answered latency apart from refusals ---------------


def answered_quantile(q: float, window: str) -> str:
    """PromQL for the q-quantile of prediction requests answered with a result (refusals left out)."""
    return f"histogram_quantile({q}, sum by (le) (rate(bridgenet_prediction_duration_seconds_bucket[{window}])))"


def service_row(y: int) -> list[Panel]:
    """Is the service scraped at all, how full is admission, how large are batches, and how slow are the
    answers compared with all requests (fast refusals pull a mixed quantile down and hide slow answers)."""
    # Per process (one `python -m service`, or each Ray replica): admitted beyond its running limit waits.
    over_limit = 'bridgenet_inflight_requests - ignoring(kind) bridgenet_admission_limit{kind="inflight"}'
    queued = f"sum(clamp_min({over_limit}, 0))"
    batch_sum, batch_count = (
        f"sum by (model) (rate(bridgenet_batch_size_{part}{{{MODEL}}}[{RATE}]))" for part in ("sum", "count")
    )
    return [
        row("Service", y),
        stat(
            "Service up",
            (0, y + 1, 4, 7),
            'min(up{job="bridgenet-service"}) or vector(0)',
            "none",
            thresholds(("red", None), ("green", 1)),
            decimals=0,
            graph_mode="none",
            mappings=[
                {"type": "value", "options": {"1": {"text": "UP", "index": 0}}},
                {"type": "value", "options": {"0": {"text": "DOWN", "index": 1}}},
            ],
            description="Whether Prometheus scrapes the service. DOWN also when it was never scraped.",
        ),
        timeseries(
            "Queue depth",
            (4, y + 1, 7, 7),
            [
                target(queued, "queued"),
                target(f"sum(bridgenet_inflight_requests) - {queued}", "running", "B"),
                target('sum(bridgenet_admission_limit{kind="queue"})', "queue limit (more get 429)", "C"),
            ],
            "short",
            min=0,
            description="Admitted predictions waiting for a slot, and running. Queued near the limit: "
            "refusals (queue_full) follow.",
        ),
        timeseries(
            "Batch size",
            (11, y + 1, 6, 7),
            [target(f"{batch_sum} / {batch_count}", "{{model}}")],
            "short",
            min=0,
            description="Mean parts per ONNX Runtime run (1 when micro-batching is off).",
        ),
        timeseries(
            "Latency p95: answered vs all requests",
            (17, y + 1, 7, 7),
            [
                target(answered_quantile(0.95, RATE), "answered"),
                target(quantile(0.95, "le", RATE), "all requests (refusals included)", "B"),
            ],
            "s",
            min=0,
            fill=0,
            description="Answered: requests that got a score. All: refusals included, which are fast.",
        ),
    ]


def traffic_row(y: int) -> list[Panel]:
    """Request rate per model and verdict, error ratio per status, refusals per reason."""
    return [
        row("Traffic and errors", y),
        timeseries(
            "Predictions by model and verdict",
            (0, y + 1, 8, 8),
            [
                target(
                    f"sum by (model, verdict) (rate(bridgenet_predictions_total{{{MODEL}}}[{RATE}]))",
                    "{{model}} {{verdict}}",
                ),
                target(f"sum(rate(bridgenet_requests_total{{{PREDICT}}}[{RATE}]))", "all prediction requests", "B"),
            ],
            "reqps",
            stack=False,
        ),
        timeseries(
            "Error rate by status (non-2xx)",
            (8, y + 1, 8, 8),
            [
                target(
                    f'sum by (status) (rate(bridgenet_requests_total{{{PREDICT},status!~"2.."}}[{RATE}])) '
                    f"/ scalar(sum(rate(bridgenet_requests_total{{{PREDICT}}}[{RATE}])))",
                    "{{status}}",
                ),
            ],
            "percentunit",
            stack=True,
            min=0,
        ),
        timeseries(
            "Refusals by reason",
            (16, y + 1, 8, 8),
            [
                target(f"sum by (reason) (rate(bridgenet_rejected_requests_total[{RATE}]))", "{{reason}}"),
            ],
            "reqps",
            stack=True,
            min=0,
        ),
    ]


def latency_row(y: int) -> list[Panel]:
    """Overall p50/p95/p99 against the budget, per-stage p95 over time, per-stage quantile table."""
    overall = [
        target(quantile(q, "le", RATE), f"p{round(q * 100)}", ref) for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
    ]
    table_targets = [
        target(quantile(q, "le, stage", STAT_WINDOW), "", ref, instant=True, fmt="table")
        for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
    ]
    stage_table = panel(
        "table",
        "Stage latency, last 5 min",
        (18, y + 1, 6, 8),
        table_targets,
        description="Time per stage of the prediction path: decode, preprocess, inference, postprocess.",
        fieldConfig={"defaults": {"unit": "s", "decimals": 4}, "overrides": []},
        options={"showHeader": True, "cellHeight": "sm"},
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True},
                    "renameByName": {"Value #A": "p50", "Value #B": "p95", "Value #C": "p99"},
                },
            },
        ],
    )
    return [
        row("Latency", y),
        timeseries(
            "Request latency p50 / p95 / p99",
            (0, y + 1, 9, 8),
            overall,
            "s",
            min=0,
            steps=thresholds(("transparent", None), ("red", LATENCY_BUDGET_S)),
            threshold_line=True,
            description="Whole request time. The red band starts at the 100 ms budget.",
            fill=0,
        ),
        timeseries(
            "Stage latency p95",
            (9, y + 1, 9, 8),
            [
                target(quantile(0.95, "le, stage", RATE), "{{stage}}"),
            ],
            "s",
            min=0,
            fill=0,
        ),
        stage_table,
    ]


def quality_row(y: int) -> list[Panel]:
    """NG rate per model over time and the anomaly-score distribution, one heatmap per model."""
    ng = f'sum by (model) (rate(bridgenet_predictions_total{{{MODEL},verdict="ng"}}[{RATE}]))'
    every = f"sum by (model) (rate(bridgenet_predictions_total{{{MODEL}}}[{RATE}]))"
    heatmap = panel(
        "heatmap",
        "Anomaly score distribution: $model",
        (12, y + 1, 12, 8),
        [
            target(
                f"sum by (le) (increase(bridgenet_anomaly_score_bucket{{{MODEL}}}[$__interval]))",
                "{{le}}",
                fmt="heatmap",
            )
        ],
        description="Raw scores per time slice (one panel per model: score scales differ between models). "
        "Watch for the mass drifting toward the model's threshold.",
        # One-minute slices: $__interval never drops to a single 10 s scrape, which increase() cannot use.
        interval="1m",
        repeat="model",
        repeatDirection="v",
        fieldConfig={"defaults": {}, "overrides": []},
        options={
            "calculate": False,
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64, "exponent": 0.5, "fill": "dark-orange"},
            "yAxis": {"axisPlacement": "left", "unit": "short"},
            "rowsFrame": {"layout": "auto"},
            "tooltip": {"mode": "single", "yHistogram": True},
            "legend": {"show": True},
        },
    )
    return [
        row("Quality", y),
        timeseries(
            "NG rate by model",
            (0, y + 1, 12, 8),
            [
                # "or 0 * every" gives a model that has not produced an NG part yet a 0 line instead of none.
                target(f"({ng} or 0 * {every}) / {every}", "{{model}}"),
            ],
            "percentunit",
            min=0,
        ),
        heatmap,
    ]


def capacity_row(y: int) -> list[Panel]:
    """Concurrency, GPU (DCGM) and the service process."""
    svc = 'job="bridgenet-service"'  # process_* also comes from Prometheus' own scrape
    # On Ray Serve (docker/ray/prometheus.yml) one node exports several replicas: `replica` tells them apart.
    return [
        row("Capacity", y),
        timeseries(
            "In-flight requests",
            (0, y + 1, 4, 7),
            [
                target("sum(bridgenet_inflight_requests)", "in flight"),
            ],
            "short",
            min=0,
        ),
        timeseries(
            "GPU utilisation",
            (4, y + 1, 5, 7),
            [
                target("avg by (gpu) (DCGM_FI_DEV_GPU_UTIL)", "GPU {{gpu}}"),
            ],
            "percent",
            min=0,
            max=100,
        ),
        timeseries(
            "GPU memory",
            (9, y + 1, 5, 7),
            [
                target("sum by (gpu) (DCGM_FI_DEV_FB_USED)", "used GPU {{gpu}}"),
                target("sum by (gpu) (DCGM_FI_DEV_FB_FREE)", "free GPU {{gpu}}", "B"),
            ],
            "mbytes",
            stack=True,
            min=0,
            description="Frame buffer in MiB; the stack's top is the card's memory.",
        ),
        timeseries(
            "Service memory (RSS)",
            (14, y + 1, 5, 7),
            [
                target(f"process_resident_memory_bytes{{{svc}}}", "{{instance}} {{replica}}"),
            ],
            "bytes",
            min=0,
            description="A steady climb over hours is a leak.",
        ),
        timeseries(
            "Service CPU",
            (19, y + 1, 5, 7),
            [
                target(f"rate(process_cpu_seconds_total{{{svc}}}[{RATE}])", "{{instance}} {{replica}}"),
            ],
            "short",
            min=0,
            description="CPU cores busy (1 = one core).",
        ),
    ]


def models_row(y: int) -> list[Panel]:
    """Which model versions are loaded and on which execution provider."""
    info = panel(
        "table",
        "Loaded models",
        (0, y + 1, 24, 5),
        [target(f"bridgenet_model_info{{{MODEL}}}", "", instant=True, fmt="table")],
        fieldConfig={"defaults": {}, "overrides": []},
        options={"showHeader": True, "cellHeight": "sm"},
        transformations=[
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "Value": True, "__name__": True, "job": True},
                    "indexByName": {"model": 0, "version": 1, "backbone": 2, "provider": 3, "instance": 4},
                },
            }
        ],
    )
    return [row("Models", y), info]


# ---- A model's life on the line (service.lifecycle): the drift watch and the shadow candidate.
def drift_row(y: int) -> list[Panel]:
    """Per model version: the drift status, the false-reject rate its window implies, and the shadow
    candidate's agreement with the answers."""
    by_agreement = f"sum by (model, agreement) (rate(bridgenet_shadow_scored_total{{{MODEL}}}[{RATE}]))"
    return [
        row("Drift watch", y),
        timeseries(
            "Drift status (0 ok, 1 watch, 2 drifting)",
            (0, y + 1, 8, 7),
            [target(f"max by (model, version) (bridgenet_drift_status{{{MODEL}}})", "{{model}} v{{version}}")],
            "short",
            min=0,
            max=2,
            description="The last BRIDGENET_DRIFT_WINDOW parts of each served version against the good scores "
            "it was calibrated on (GET /v1/models/{name}/drift says why). 2 raises BridgeNetModelDrifting.",
        ),
        timeseries(
            "Implied false-reject rate",
            (8, y + 1, 8, 7),
            [
                target(
                    f"max by (model, version) (bridgenet_drift_implied_false_reject_rate{{{MODEL}}})",
                    "{{model}} v{{version}}",
                )
            ],
            "percentunit",
            min=0,
            description="The share of good parts the window's median and spread put above the threshold in "
            "effect; compare with the calibration's target (1 % by default).",
        ),
        timeseries(
            "Shadow candidate: parts / s by agreement",
            (16, y + 1, 8, 7),
            [target(by_agreement, "{{model}} {{agreement}}")],
            "short",
            min=0,
            stack=True,
            description="Parts the shadow candidate (BRIDGENET_SHADOW) scored, by whether its verdict agreed "
            "with the answer's; skipped parts: bridgenet_shadow_skipped_total. The parts where they disagree: "
            "the review station's Shadow page.",
        ),
    ]


# ---- Records and push (service.records, service.push): one row, kept together.
def traceability_row(y: int) -> list[Panel]:
    """The audit trail's write time, the evidence archive, and the push outbox per destination."""
    audit = "sum by (le) (rate(bridgenet_audit_write_seconds_bucket[{w}]))"
    return [
        row("Traceability", y),
        timeseries(
            "Push backlog",
            (0, y + 1, 6, 7),
            [target("sum by (destination) (bridgenet_push_backlog)", "{{destination}}")],
            "short",
            min=0,
            description="Results waiting for the line (MQTT, webhook). A rising line: the destination is down; "
            "nothing is lost, the results go out in order once it is back.",
        ),
        timeseries(
            "Push failures / s",
            (6, y + 1, 6, 7),
            [target(f"sum by (destination) (rate(bridgenet_push_failures_total[{RATE}]))", "{{destination}}")],
            "short",
            min=0,
            description="Failed delivery attempts (retried with capped exponential backoff).",
        ),
        timeseries(
            "Audit write time",
            (12, y + 1, 6, 7),
            [
                target(f"histogram_quantile(0.5, {audit.format(w=RATE)})", "p50"),
                target(f"histogram_quantile(0.99, {audit.format(w=RATE)})", "p99", "B"),
            ],
            "s",
            min=0,
            description="Time to write and commit one decision record (evidence and outbox included), "
            "added to every answer.",
        ),
        timeseries(
            "Evidence archive",
            (18, y + 1, 6, 7),
            [
                target("sum(bridgenet_archive_bytes)", "bytes stored"),
            ],
            "bytes",
            min=0,
            description="Size of the evidence archive (BRIDGENET_ARCHIVE_MAX_GB caps it; oldest OK parts go first). "
            "Parts recorded without evidence: bridgenet_archive_failures_total.",
        ),
    ]


# ---- PLC interface (service.plc): the OPC UA result handshake, per model.
def plc_row(y: int) -> list[Panel]:
    """Results the PLC has not acknowledged yet, those held back by a full buffer, overruns and expiries."""
    return [
        row("PLC (OPC UA)", y),
        timeseries(
            "Unacknowledged results",
            (0, y + 1, 12, 7),
            [
                target("sum by (model) (bridgenet_plc_unacknowledged_results)", "{{model}} ready"),
                target("sum by (model) (bridgenet_plc_waiting_results)", "{{model}} waiting (overrun)", "B"),
            ],
            "short",
            min=0,
            description="Results made ready to the PLC and not acknowledged (AcknowledgeResult), and those held "
            "back because the buffer is full. Waiting above 0: the PLC stopped acknowledging; nothing is lost, "
            "they are made ready in order as it acknowledges.",
        ),
        timeseries(
            "Overruns and expiries",
            (12, y + 1, 12, 7),
            [
                target(f"sum by (model) (increase(bridgenet_plc_overruns_total[{RATE}]))", "{{model}} overruns"),
                target(f"sum by (model) (increase(bridgenet_plc_expired_total[{RATE}]))", "{{model}} expired", "B"),
            ],
            "short",
            min=0,
            description="Results that found the buffer full, and results unacknowledged past "
            "BRIDGENET_OPCUA_RESULT_TTL_S (moved to the dead letters; POST /v1/admin/push/retry re-queues them).",
        ),
    ]


def build_dashboard() -> Panel:
    """The whole dashboard as a JSON-ready dict, panel ids assigned in reading order."""
    panels = [
        *top_row(),
        *service_row(4),
        *traffic_row(12),
        *latency_row(21),
        *quality_row(30),
        *capacity_row(39),
        *models_row(47),
        *drift_row(53),
    ]
    panels += traceability_row(61)
    panels += plc_row(69)
    for number, p in enumerate(panels, start=1):
        p["id"] = number
    model_var = {
        "name": "model",
        "label": "Model",
        "type": "query",
        "datasource": DATASOURCE,
        "definition": "label_values(bridgenet_model_info, model)",
        "query": {"qryType": 1, "query": "label_values(bridgenet_model_info, model)", "refId": "ModelVariable"},
        "refresh": 2,  # on time-range change: a newly added model appears without a reload
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }
    return {
        "uid": "bridgenet-line",
        "title": "BridgeNet inspection line",
        "description": "Health of the BridgeNet inspection service: traffic, verdicts, latency, GPU.",
        "tags": ["bridgenet"],
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,  # shared crosshair: one moment lines up across all graphs
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "schemaVersion": 39,
        "version": 1,
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [model_var]},
        "panels": panels,
    }


def render_json(dashboard: Panel) -> str:
    """The committed file's exact text."""
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DASHBOARD_PATH, help="dashboard JSON to write")
    parser.add_argument("--layout-png", type=Path, help="also draw the panel grid to this PNG")
    args = parser.parse_args()
    dashboard = build_dashboard()
    args.out.write_text(render_json(dashboard), encoding="utf-8")
    print(f"wrote {args.out}")
    if args.layout_png:
        draw_layout(dashboard, args.layout_png)
        print(f"wrote {args.layout_png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
