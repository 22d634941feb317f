"""The PromQL metric-name extraction that compares dashboards with /metrics."""

from __future__ import annotations

import json

import pytest

from tests.deploy.dashboard_queries import (
    UnsupportedQueryError,
    base_metric_name,
    dashboard_metric_names,
    promql_metric_names,
    substitute_variables,
    variable_query_metric_names,
)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        # Histogram buckets reduce to the base name; label names in `by (...)` are not metrics.
        ("histogram_quantile(0.95, sum by (le, stage) (rate(a_seconds_bucket[5m])))", {"a_seconds"}),
        ("sum(rate(b_total[1m])) by (model)", {"b_total"}),
        # Braces and keywords inside label values are not syntax.
        ('c_info{provider=~"(?i).*(cuda|tensorrt) or {x}.*"}', {"c_info"}),
        # Binary operators, vector matching and modifiers.
        ("rate(d_total[1m] offset 5m) / on(model) group_left(version) e_info", {"d_total", "e_info"}),
        ("f_count / f_sum > bool 0.5", {"f"}),
        ("(g_total or vector(0)) unless h_total and i_total", {"g_total", "h_total", "i_total"}),
        # Numbers in every notation, including ones that look like identifiers after a digit.
        ("1e3 * up + 0x1F - .5 + 2.5e-3", {"up"}),
        # Grafana variables and durations.
        ("sum(rate(j_total[$__rate_interval])) > ${threshold:raw} * $factor", {"j_total"}),
        ("k_total @ 1609746000", {"k_total"}),
        ('{__name__="l_total", job="x"}', {"l_total"}),
        ("vector(1)", set()),
    ],
)
def test_promql_metric_names(expr: str, expected: set[str]) -> None:
    assert promql_metric_names(expr) == expected


def test_regex_on_metric_name_cannot_be_listed() -> None:
    with pytest.raises(UnsupportedQueryError, match="__name__"):
        promql_metric_names('{__name__=~"bridgenet_.*"}')


def test_base_metric_name_strips_only_histogram_suffixes() -> None:
    assert base_metric_name("x_bucket") == "x"
    assert base_metric_name("x_total") == "x_total"
    assert base_metric_name("_count") == "_count"  # a bare suffix is a name, not a suffix


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("label_values(m_info, model)", {"m_info"}),
        ('label_values(m_info{job="a"}, model)', {"m_info"}),
        ("label_values(model)", set()),
        ("query_result(topk(3, n_total))", {"n_total"}),
        ("metrics(bridgenet_.*)", set()),
    ],
)
def test_variable_query_metric_names(query: str, expected: set[str]) -> None:
    assert variable_query_metric_names(query) == expected


def test_dashboard_metric_names_walks_rows_variables_and_accepts_text() -> None:
    dashboard = {
        "panels": [
            {"type": "timeseries", "targets": [{"expr": "a_total"}, {"refId": "B"}]},
            {
                "type": "row",
                "collapsed": True,
                "panels": [{"type": "stat", "targets": [{"expr": "rate(b_seconds_sum[1m])"}]}],
            },
        ],
        "templating": {
            "list": [
                {"type": "query", "query": "label_values(c_info, model)"},
                {"type": "query", "query": {"query": "label_values(d_info, version)", "qryType": 1}},
                {"type": "custom", "query": "e_not_a_metric, f"},
            ]
        },
    }
    expected = {"a_total", "b_seconds", "c_info", "d_info"}
    assert dashboard_metric_names(dashboard) == expected
    assert dashboard_metric_names(json.dumps(dashboard)) == expected


def test_substitute_variables_fills_known_and_rejects_unknown() -> None:
    values = {"__rate_interval": "1m", "model": ".*"}
    assert substitute_variables('x{model=~"$model"}[$__rate_interval]', values) == 'x{model=~".*"}[1m]'
    assert substitute_variables("y[${__rate_interval}]", values) == "y[1m]"
    with pytest.raises(KeyError, match="station"):
        substitute_variables('x{station="$station"}', values)
