"""Grafana panel builders (Prometheus targets, stat, time series, rows) and a layout sketch for make_dashboard.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

Panel = dict[str, Any]

# The uid provisioned in docker/grafana/provisioning/datasources/prometheus.yml.
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False, fmt: str = "time_series") -> Panel:
    """One Prometheus query of a panel."""
    return {
        "datasource": DATASOURCE,
        "refId": ref,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "instant": instant,
        "range": not instant,
        "format": fmt,
    }


def thresholds(*steps: tuple[str, float | None]) -> dict[str, Any]:
    """Absolute thresholds: (colour, lower bound) pairs, the first bound None."""
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


def panel(kind: str, title: str, grid: tuple[int, int, int, int], targets: list[Panel], **extra: Any) -> Panel:
    """A panel of type `kind` at grid (x, y, w, h) on Grafana's 24-column grid."""
    x, y, w, h = grid
    return {
        "type": kind,
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": targets,
        **extra,
    }


def stat(title: str, grid: tuple[int, int, int, int], expr: str, unit: str, steps: dict[str, Any], **kw: Any) -> Panel:
    """A single-number panel coloured by its thresholds (the top row of the dashboard)."""
    return panel(
        "stat",
        title,
        grid,
        [target(expr)],
        description=kw.pop("description", ""),
        fieldConfig={
            "defaults": {
                "unit": unit,
                "decimals": kw.pop("decimals", 2),
                "thresholds": steps,
                "color": {"mode": "thresholds"},
                "mappings": kw.pop("mappings", []),
            },
            "overrides": [],
        },
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": kw.pop("graph_mode", "area"),
            "textMode": "value",
            "justifyMode": "center",
            "orientation": "auto",
        },
    )


def timeseries(title: str, grid: tuple[int, int, int, int], targets: list[Panel], unit: str, **kw: Any) -> Panel:
    """A graph over time; `steps` with `threshold_line=True` draws e.g. the latency budget."""
    custom: dict[str, Any] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": kw.pop("fill", 10)}
    if kw.pop("stack", False):
        custom["stacking"] = {"mode": "normal", "group": "A"}
    if kw.pop("threshold_line", False):
        custom["thresholdsStyle"] = {"mode": "line+area"}
    defaults: dict[str, Any] = {
        "unit": unit,
        "custom": custom,
        "thresholds": kw.pop("steps", thresholds(("green", None))),
    }
    for key in ("min", "max"):
        if key in kw:
            defaults[key] = kw.pop(key)
    return panel(
        "timeseries",
        title,
        grid,
        targets,
        description=kw.pop("description", ""),
        fieldConfig={"defaults": defaults, "overrides": []},
        options={
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    )


def row(title: str, y: int) -> Panel:
    """A section header; rows carry no query and so no datasource."""
    return {
        "type": "row",
        "title": title,
        "collapsed": False,
        "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
        "panels": [],
    }


def draw_layout(dashboard: Panel, out: Path) -> None:
    """Sketch the panel grid (titles and types) as a PNG for the docs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
    fig, ax = plt.subplots(figsize=(12, bottom * 0.32))
    colours = {"stat": "#c8e6c9", "row": "#eeeeee", "timeseries": "#bbdefb", "heatmap": "#ffe0b2", "table": "#e1bee7"}
    for p in dashboard["panels"]:
        g = p["gridPos"]
        ax.add_patch(
            Rectangle(
                (g["x"], g["y"]),
                g["w"],
                g["h"],
                facecolor=colours.get(p["type"], "white"),
                edgecolor="#555555",
                linewidth=1,
            )
        )
        label = p["title"] if p["type"] == "row" else f"{p['title']}\n({p['type']})"
        ax.text(
            g["x"] + g["w"] / 2,
            g["y"] + g["h"] / 2,
            label,
            ha="center",
            va="center",
            fontsize=7 if p["type"] != "row" else 8,
            wrap=True,
            fontweight="bold" if p["type"] == "row" else "normal",
        )
    ax.set_xlim(0, 24)
    ax.set_ylim(bottom, 0)
    ax.set_axis_off()
    ax.set_title(f"{dashboard['title']}: panel layout (24-column grid; heatmap repeats per model)", fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
