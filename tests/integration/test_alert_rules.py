"""grafana/alerts.yaml with the real promtool: `check rules`, `test rules` (grafana/alerts_test.yaml),
plus coverage of the unit tests and the metric names the rules use."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import missing_binary
from realservers import find_binary

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "grafana" / "alerts.yaml"
RULE_TESTS = ROOT / "grafana" / "alerts_test.yaml"
REQUIRED_ALERTS = {
    "SmtpguardUpstreamDown",
    "SmtpguardRejectRatioSpike",
    "SmtpguardDnsFailureRate",
    "SmtpguardStoreCircuitOpen",
    "SmtpguardPolicyReloadFailed",
    "SmtpguardNoTraffic",
    "SmtpguardTargetDown",
}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = find_binary("promtool")
    if not exe:
        missing_binary("promtool")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def test_check_rules() -> None:
    proc = promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in proc.stdout


def test_unit_tests_pass() -> None:
    proc = promtool("test", "rules", str(RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_unit_tests_bite(tmp_path: Path) -> None:
    """Negative control: a wrong expectation makes promtool fail and show the difference."""
    shutil.copy(RULES, tmp_path / RULES.name)
    broken = RULE_TESTS.read_text().replace(
        "exp_labels: {severity: critical, job: smtpguard, instance: a}",
        "exp_labels: {severity: page, job: smtpguard, instance: a}",
        1,
    )
    assert broken != RULE_TESTS.read_text()
    (tmp_path / RULE_TESTS.name).write_text(broken)
    proc = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert proc.returncode != 0
    assert 'severity="critical"' in proc.stdout + proc.stderr


def test_required_alerts_exist_and_are_documented() -> None:
    rules = {r["alert"]: r for r in alert_rules()}
    assert set(rules) >= REQUIRED_ALERTS
    assert rules["SmtpguardUpstreamDown"]["expr"].strip() == "smtpguard_upstream_up == 0"
    assert rules["SmtpguardUpstreamDown"]["for"] == "2m"
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), name
        assert rule["annotations"]["runbook_url"].startswith("docs/observability.md#"), name


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names <= firing, f"never shown firing: {sorted(names - firing)}"
    assert names <= silent, f"never shown silent: {sorted(names - silent)}"


def test_rules_use_only_catalogued_metrics() -> None:
    spec = importlib.util.spec_from_file_location("dashboard_queries", ROOT / "grafana" / "queries.py")
    assert spec and spec.loader
    queries = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(queries)
    known = set(queries.exported_metrics()) | {"up"}
    for rule in alert_rules():
        names = queries.referenced_metrics(rule["expr"])
        assert names, rule["alert"]
        assert names <= known, f"{rule['alert']}: {sorted(names - known)} not in smtpguard/metrics.py"
