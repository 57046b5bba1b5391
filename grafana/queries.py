"""Every PromQL query of grafana/smtpguard.json, ready to run against a real Prometheus.

    python grafana/queries.py                      # JSON lines: {"panel": ..., "ref": ..., "expr": ...}
    python grafana/queries.py --var instance=127.0.0.1:9108

From Python (no package install needed; load it by path):

    spec = importlib.util.spec_from_file_location("dashboard_queries", ROOT / "grafana" / "queries.py")
    ...; for title, expr in module.panel_queries(): ...

Grafana's built-in interval variables are replaced by fixed windows ($__rate_interval -> 1m,
$__interval -> 30s, $__range -> 5m) and the dashboard's template variables by a regex matching
everything (".*"), which is what "All" means on this dashboard (allValue ".*"). Pass `variables`
to pin one instance or listener instead.

Also here, for the tests: `exported_metrics()` (series names and labels declared in
smtpguard/metrics.py, parsed without importing it) and `referenced_metrics()` /
`selector_labels()` / `grouping_labels()` (what a PromQL expression uses).
"""

from __future__ import annotations

import ast
import json
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parent / "smtpguard.json"
METRICS_PY = Path(__file__).resolve().parents[1] / "smtpguard" / "metrics.py"
PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "atan2",
}

BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "30s",
    "__range": "5m",
    "__range_s": "300",
    "__interval_ms": "30000",
}

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    with path.open() as f:
        return json.load(f)  # type: ignore[no-any-return]


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """All panels, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def template_variables(dashboard: Mapping[str, Any]) -> list[str]:
    return [v["name"] for v in dashboard.get("templating", {}).get("list", [])]


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name in variables:
            return variables[name]
        if name in BUILTINS:
            return BUILTINS[name]
        raise KeyError(f"unknown dashboard variable ${name} in {expr!r}")

    return _VARIABLE.sub(repl, expr)


def raw_queries(path: Path = DASHBOARD) -> list[tuple[str, str, str]]:
    """(panel title, refId, expr as written in the dashboard) for every Prometheus target."""
    out = []
    for panel in iter_panels(load_dashboard(path).get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                out.append((panel.get("title", ""), target.get("refId", ""), target["expr"]))
    return out


def variable_values(dashboard: Mapping[str, Any], overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every template variable (but the datasource) as "All" (`.*`), then `overrides`."""
    values = {name: ".*" for name in template_variables(dashboard) if name != "datasource"}
    values.update(overrides or {})
    return values


def panel_queries(path: Path = DASHBOARD, variables: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """(panel title, expr with every $variable substituted) for every Prometheus target."""
    values = variable_values(load_dashboard(path), variables)
    return [(title, substitute(expr, values)) for title, _ref, expr in raw_queries(path)]


def annotation_queries(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(annotation name, expr as written) for every Prometheus annotation query."""
    annotations = load_dashboard(path).get("annotations", {}).get("list", [])
    return [(a.get("name", ""), a["expr"]) for a in annotations if a.get("expr")]


def variable_queries(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(variable name, the series selector inside label_values(...)) for query variables."""
    out = []
    for var in load_dashboard(path).get("templating", {}).get("list", []):
        query = var.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", text.strip())
        if var.get("type") == "query" and m:
            out.append((var["name"], m.group(1)))
    return out


def exported_metrics(path: Path = METRICS_PY) -> dict[str, set[str] | None]:
    """Series names smtpguard/metrics.py exports -> their label names (None: not known, Info)."""
    tree = ast.parse(path.read_text())
    out: dict[str, set[str] | None] = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        kind = node.func.id
        if kind not in {"Counter", "Gauge", "Histogram", "Info", "Summary"} or not node.args:
            continue
        name_node = node.args[0]
        assert isinstance(name_node, ast.Constant) and isinstance(name_node.value, str)
        name = name_node.value
        label_node = (
            node.args[2]
            if len(node.args) > 2
            else next((k.value for k in node.keywords if k.arg == "labelnames"), None)
        )
        labels = set(ast.literal_eval(label_node)) if label_node is not None else set()
        if kind == "Counter":
            base = name.removesuffix("_total")
            out[base + "_total"] = labels
            out[base + "_created"] = labels
        elif kind == "Gauge":
            out[name] = labels
        elif kind in {"Histogram", "Summary"}:
            for suffix in ("_bucket", "_sum", "_count", "_created"):
                out[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
        else:  # Info: labels are the dict keys set at run time
            out[name + "_info"] = None
    return out


def strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def referenced_metrics(expr: str) -> set[str]:
    text = strip_strings(expr)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)  # range / subquery windows
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?!\w)(\s*\()?", text):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


def selector_labels(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names in its {...} matchers) for every selector of the expression."""
    text = strip_strings(expr)
    return [
        (m.group(1), {lm.group(1) for lm in re.finditer(r"(\w+)\s*(?:=~|!~|!=|=)", m.group(2))})
        for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", text)
    ]


def grouping_labels(expr: str) -> set[str]:
    text = strip_strings(expr)
    return {
        label.strip()
        for m in re.finditer(r"\b(?:by|without)\s*\(([^)]*)\)", text)
        for label in m.group(1).split(",")
        if label.strip()
    }


def main(argv: list[str]) -> int:
    overrides = {}
    args = iter(argv)
    for arg in args:
        if arg == "--var":
            name, _, value = next(args).partition("=")
            overrides[name] = value
    values = variable_values(load_dashboard(), overrides)
    for title, ref, expr in raw_queries():
        try:
            print(json.dumps({"panel": title, "ref": ref, "expr": substitute(expr, values)}), flush=True)
        except BrokenPipeError:  # e.g. piped into head
            return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
