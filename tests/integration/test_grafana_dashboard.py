"""grafana/smtpguard.json, checked with real tools.

1. JSON Schema generated from Grafana's own TypeScript types (npm @grafana/schema, via
   ts-json-schema-generator), validated with check-jsonschema. Generation takes ~10 s (npm
   install + generator), so it runs at test time and is cached under .work/grafana-schema/
   (keyed by the pinned versions). Without npm the schema check fails under CI=true and is
   skipped elsewhere (tests/conftest.py's convention); it needs the npm registry once.
2. Every panel/annotation/variable query is valid PromQL: all of them go into one recording-rule
   file that `promtool check rules` (Debian package prometheus) must accept.
3. Every metric name a query references exists in smtpguard/metrics.py (parsed with ast, expanded
   the way prometheus_client exposes it), and every label a query matches or groups by exists on
   the metrics it uses.
Executing the queries against a real Prometheus scraping smtpguard is a separate test; it gets its
queries from grafana/queries.py (`panel_queries()`).
"""

from __future__ import annotations

import importlib.util
import json
import re
import smtplib
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from conftest import missing_binary
from realservers import find_binary

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "grafana" / "smtpguard.json"
SCHEMA_PACKAGES = ("@grafana/schema@13.2.3", "ts-json-schema-generator@2.4.0")
SCHEMA_CACHE = ROOT / ".work" / "grafana-schema" / "-".join(p.replace("/", "_") for p in SCHEMA_PACKAGES)

# prometheus_client's default process collector: not in metrics.py, but exported by the same endpoint
PROCESS_METRICS = {"process_resident_memory_bytes": set(), "process_cpu_seconds_total": set()}
ALWAYS_LABELS = {"instance", "job"}


def load_queries_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dashboard_queries", ROOT / "grafana" / "queries.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


queries = load_queries_module()


def all_expressions() -> list[tuple[str, str]]:
    """(where, expr with variables substituted) for panels, annotations and variable queries."""
    values = queries.variable_values(queries.load_dashboard())
    found = [(f"panel {title!r}", expr) for title, expr in queries.panel_queries()]
    found += [(f"annotation {n!r}", queries.substitute(e, values)) for n, e in queries.annotation_queries()]
    found += [(f"variable {n!r}", queries.substitute(e, values)) for n, e in queries.variable_queries()]
    return found


def promtool() -> str:
    found = find_binary("promtool")
    if not found:
        missing_binary("promtool")
    return found


def check_rules(exprs: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:query_{i}:check", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)


# -- structure ---------------------------------------------------------------------------------


def test_dashboard_structure() -> None:
    dash = queries.load_dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"instance", "listener"} <= set(variables)
    panels = list(queries.iter_panels(dash["panels"]))
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert rows == ["Overview", "Policy", "Checks", "Upstream", "Protocol abuse", "Capacity"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t.get("datasource", p["datasource"])["uid"] == "${datasource}"
            assert "$instance" in t["expr"], f"{p['title']}: every query follows the instance picker"
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
    exprs = " ".join(e for _, _, e in queries.raw_queries())
    assert 'mode="shadow"' in exprs and "process_resident_memory_bytes" in exprs


def test_every_panel_query_is_extracted() -> None:
    pairs = queries.panel_queries()
    n_targets = sum(len(p.get("targets", [])) for p in queries.iter_panels(queries.load_dashboard()["panels"]))
    assert len(pairs) == n_targets
    for title, expr in pairs:
        assert "$" not in expr, f"{title}: unsubstituted variable in {expr}"
    pinned = queries.panel_queries(variables={"instance": "127.0.0.1:9108"})
    assert all('instance=~"127.0.0.1:9108"' in e for _, e in pinned)


# -- 1. Grafana's JSON schema ------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard_schema() -> Path:
    schema = SCHEMA_CACHE / "dashboard.schema.json"
    if schema.exists():
        return schema
    npm = find_binary("npm")
    if not npm:
        missing_binary("npm")  # fails under CI=true, skips locally
    tools = SCHEMA_CACHE / "tools"
    tools.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(tools), *SCHEMA_PACKAGES],
        check=True,
        timeout=300,
    )
    types = tools / "node_modules/@grafana/schema/dist/types/raw/dashboard/x/types.gen.d.ts"
    partial = schema.with_suffix(".partial")
    subprocess.run(
        [
            str(tools / "node_modules/.bin/ts-json-schema-generator"),
            "--path",
            str(types),
            "--type",
            "Dashboard",
            "--no-type-check",
            "--additional-properties",
            "-o",
            str(partial),
        ],
        check=True,
        timeout=300,
    )
    partial.replace(schema)
    return schema


def check_jsonschema(schema: Path, instance: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "check-jsonschema"
    cmd = [str(exe) if exe.exists() else "check-jsonschema", "--schemafile", str(schema), str(instance)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_dashboard_matches_grafana_schema(dashboard_schema: Path) -> None:
    proc = check_jsonschema(dashboard_schema, DASHBOARD)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok -- validation done" in proc.stdout


def test_grafana_schema_bites(dashboard_schema: Path, tmp_path: Path) -> None:
    dash = json.loads(DASHBOARD.read_text())
    panel = next(p for p in dash["panels"] if p["type"] == "timeseries")
    panel["gridPos"] = {"w": 12}
    dash["schemaVersion"] = "39"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dash))
    proc = check_jsonschema(dashboard_schema, bad)
    assert proc.returncode != 0
    assert "'h' is a required property" in proc.stdout and "'39' is not of type 'number'" in proc.stdout


# -- 2. PromQL syntax --------------------------------------------------------------------------


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    found = all_expressions()
    assert len(found) > 40
    proc = check_rules([e for _, e in found], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(found)} rules found" in proc.stdout


def test_promtool_catches_a_broken_query(tmp_path: Path) -> None:
    proc = check_rules(["sum by (le) (rate(smtpguard_messages_total[1m])"], tmp_path)
    assert proc.returncode != 0
    assert "parse" in (proc.stdout + proc.stderr).lower()


def doc_queries() -> list[tuple[str, str]]:
    """(doc file, query) for every ```promql block of the docs."""
    return [
        (doc.name, block.strip())
        for doc in sorted((ROOT / "docs").glob("*.md"))
        for block in re.findall(r"```promql\n(.*?)```", doc.read_text(), re.S)
    ]


def test_doc_queries_are_valid_promql(tmp_path: Path) -> None:
    found = doc_queries()
    assert len(found) >= 3, "docs/rollout.md has PromQL examples"
    proc = check_rules([q for _, q in found], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    known = set(queries.exported_metrics())
    for doc, q in found:
        unknown = queries.referenced_metrics(q) - known
        assert not unknown, f"{doc}: {sorted(unknown)} not in smtpguard/metrics.py"


def test_provisioning_files() -> None:
    prov = ROOT / "grafana" / "provisioning"
    dashboards = yaml.safe_load((prov / "dashboards.yaml").read_text())
    assert dashboards["apiVersion"] == 1
    (provider,) = dashboards["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    datasources = yaml.safe_load((prov / "datasources.yaml").read_text())
    assert datasources["apiVersion"] == 1
    assert [d["type"] for d in datasources["datasources"]] == ["prometheus"]
    # the dashboard must not depend on that datasource's name or uid: every reference is the variable
    refs: list[Any] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("datasource"), dict):
                refs.append(node["datasource"].get("uid"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(queries.load_dashboard())
    assert len(refs) > 40
    assert set(refs) <= {"${datasource}", "-- Grafana --"}, set(refs)


# -- 3. metric and label names -----------------------------------------------------------------


def test_metric_catalogue_parses() -> None:
    catalogue = queries.exported_metrics()
    assert catalogue["smtpguard_messages_total"] == {"listener", "outcome"}
    assert "le" in (catalogue["smtpguard_dns_query_duration_seconds_bucket"] or set())
    assert "smtpguard_build_info" in catalogue and "smtpguard_upstream_up" in catalogue


def test_every_referenced_metric_exists() -> None:
    known = {**queries.exported_metrics(), **PROCESS_METRICS}
    used: set[str] = set()
    for where, expr in all_expressions():
        names = queries.referenced_metrics(expr)
        assert names, f"{where}: no metric found in {expr}"
        unknown = names - set(known)
        assert not unknown, f"{where}: {sorted(unknown)} not in smtpguard/metrics.py"
        used |= names
    # the parser really sees names: a typo must be reported
    assert queries.referenced_metrics('sum by (le) (rate(smtpguard_mesages_total{outcome="x"}[5m]))') == {
        "smtpguard_mesages_total"
    }
    assert len(used) >= 25


def test_every_label_used_exists_on_its_metric() -> None:
    known = {**queries.exported_metrics(), **PROCESS_METRICS}
    for where, expr in all_expressions():
        metrics = queries.referenced_metrics(expr)
        for metric, labels in queries.selector_labels(expr):
            allowed = known[metric]
            if allowed is None:
                continue
            extra = labels - allowed - ALWAYS_LABELS
            assert not extra, f"{where}: {metric} has no label(s) {sorted(extra)}"
        available: set[str] = set(ALWAYS_LABELS)
        for m in metrics:
            available |= known[m] or set()
        missing = queries.grouping_labels(expr) - available
        assert not missing, f"{where}: grouping by {sorted(missing)}, which {sorted(metrics)} do not have"


# -- 4. live: every query and alert rule on a real Prometheus scraping a real smtpguard --------

# with a little ordinary traffic (delivered mail, a VRFY) these panels must show data;
# the others need events this test does not cause (rejections, TLS, Redis, upstream errors, ...)
EXPECT_DATA = {
    "Messages / s",
    "Open sessions",
    "Upstream up",
    "Rules loaded",
    "Traffic: transactions by outcome",
    "Connections by result",
    "SMTP replies by verb and class",
    "Seconds since last reload",
    "Process memory (RSS)",
    "Process CPU",
    "Listeners up / draining",
}


CLIENT_ZONE = """$ORIGIN client.test.
$TTL 300
@   IN SOA ns1.client.test. hostmaster.client.test. ( 1 3600 600 86400 60 )
@   IN NS  ns1.client.test.
ns1 IN A   127.0.0.1
@   IN TXT "v=spf1 ip4:127.0.0.0/8 -all"
"""


def test_queries_and_alerts_run_on_live_prometheus(tmp_path: Path, prometheus_factory: Any,
                                                   nsd_factory: Any) -> None:
    from sgproc import Smtpguard

    # the default policy defers mail when SPF cannot be evaluated: give it a DNS that answers
    nsd = nsd_factory({"client.test": CLIENT_ZONE})
    with Smtpguard.start(tmp_path / "sg", upstream=f"maildir:{tmp_path}/mail",
                         config={"dns": {"nameservers": [f"127.0.0.1:{nsd.port}"], "timeout": 1}}) as guard:
        for i in range(3):
            with smtplib.SMTP(guard.host, guard.port, timeout=10) as client:
                client.sendmail("a@client.test", ["bob@example.test"], f"Subject: live {i}\r\n\r\nx\r\n")
        with smtplib.SMTP(guard.host, guard.port, timeout=10) as client:
            client.ehlo("client.test")
            assert client.verify("bob")[0] == 252  # VRFY reveals nothing (252 2.5.2)
        prom = prometheus_factory([f"127.0.0.1:{guard.metrics_port}"], rule_files=[ROOT / "grafana" / "alerts.yaml"])
        prom.wait_for_target_up()
        prom.wait_query("count_over_time(smtpguard_upstream_up[1m]) >= 3", timeout=60)  # rate() needs samples
        empty = []
        for title, expr in queries.panel_queries():
            if not prom.query(expr):  # raises on a query Prometheus refuses
                empty.append(title)
        assert not EXPECT_DATA & set(empty), sorted(EXPECT_DATA & set(empty))
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        assert len(rules) == 8 and all(r["health"] == "ok" for r in rules), rules
