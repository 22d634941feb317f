"""Which Prometheus metrics a Grafana dashboard queries, to compare a dashboard with a service's /metrics."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

# A classic histogram or summary named X is scraped as X_bucket / X_sum / X_count: report X.
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Words of PromQL that look like metric names but are operators or modifiers.
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "inf",
        "nan",
    }
)
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*(=~|!=|!~|=)\s*"((?:\\.|[^"\\])*)"')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
# `by (a, b)` and friends hold label names, not metrics.
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE)
_MODIFIER = re.compile(r"\b(?:offset\s+-?|@\s*)[\w$.:()]+", re.IGNORECASE)
# Grafana variables: $var, ${var}, ${var:fmt}, [[var]].
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[[^\]]*\]\]")
_NUMBER = re.compile(r"(?<![\w:])(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?![\w:])")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL_VALUES = re.compile(r"^\s*label_values\s*\(\s*(.*?)\s*,\s*[A-Za-z_]\w*\s*\)\s*$", re.DOTALL)
_QUERY_RESULT = re.compile(r"^\s*query_result\s*\((.*)\)\s*$", re.DOTALL)


class UnsupportedQueryError(ValueError):
    """A query names its metrics in a way that cannot be listed statically (e.g. a regex on __name__)."""


def base_metric_name(name: str) -> str:
    """`name` without a histogram suffix: 'x_seconds_bucket' → 'x_seconds'."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def promql_metric_names(expr: str) -> set[str]:
    """Every metric name `expr` selects, histogram suffixes stripped.

    Works on the text, not a full parse: strings, label matchers, ranges, grouping clauses, numbers and
    Grafana variables are removed, then every identifier not followed by "(" (a function or aggregation)
    and not a keyword is a metric name.
    """
    names: set[str] = set()
    for op, value in _NAME_MATCHER.findall(expr):
        if op != "=":
            raise UnsupportedQueryError(f'__name__{op}{value!r} in {expr!r}: only __name__="..." can be listed')
        names.add(value)
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _MODIFIER.sub(" ", text)
    text = _VARIABLE.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    for match in _IDENTIFIER.finditer(text):
        word = match.group()
        if word.lower() in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(word)
    return {base_metric_name(n) for n in names}


def variable_query_metric_names(query: str) -> set[str]:
    """Metric names behind a Grafana Prometheus template-variable query."""
    if match := _LABEL_VALUES.match(query):
        return promql_metric_names(match.group(1))
    if match := _QUERY_RESULT.match(query):
        return promql_metric_names(match.group(1))
    # label_values(label), label_names(), metrics(regex): no metric selected by name.
    return set()


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    """The PromQL of every panel target (hidden targets too), in panel order."""
    return [
        target["expr"]
        for panel in _panels(dashboard.get("panels", []))
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def dashboard_variable_queries(dashboard: dict[str, Any]) -> list[str]:
    """The query text of every query-type template variable."""
    queries = []
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query", "")
        # Grafana 10+ stores {"query": "...", "qryType": ...}; older dashboards store the string.
        queries.append(query.get("query", "") if isinstance(query, dict) else str(query))
    return queries


def substitute_variables(expr: str, values: Mapping[str, str]) -> str:
    """`expr` with Grafana's `$name` / `${name}` replaced from `values`, to run it outside Grafana."""

    def value(match: re.Match[str]) -> str:
        if match.group(1) not in values:
            raise KeyError(f"no value for Grafana variable ${match.group(1)} in {expr!r}")
        return values[match.group(1)]

    return re.sub(r"\$\{?(\w+)\}?", value, expr)


def dashboard_metric_names(dashboard_json: dict[str, Any] | str) -> set[str]:
    """Every metric name the dashboard queries (panels and template variables), histograms by base name.

    `dashboard_json`: the dashboard as parsed JSON or as JSON text.
    """
    dashboard = json.loads(dashboard_json) if isinstance(dashboard_json, str) else dashboard_json
    names: set[str] = set()
    for expr in dashboard_exprs(dashboard):
        names |= promql_metric_names(expr)
    for query in dashboard_variable_queries(dashboard):
        names |= variable_query_metric_names(query)
    return names
