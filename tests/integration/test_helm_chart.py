"""The Helm chart, checked with the real tools: helm lint/template and kubernetes-validate.

helm is the official static binary that scripts/setup.sh extracts into the venv's bin directory
(docs: ../shared/notes/tooling.md section 1a); kubernetes-validate comes from the test extras and
validates against the Kubernetes OpenAPI schemas it bundles (offline, --strict = no unknown fields).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import yaml
from conftest import missing_binary
from pydantic import BaseModel
from realservers import find_binary

from smtpguard.checks.base import CheckEnv
from smtpguard.checks.registry import CheckRegistry
from smtpguard.config import Config
from smtpguard.errors import ConfigError
from smtpguard.policy.loader import LoadedPolicy, load_policy

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "smtpguard"
VALUES_DIR = ROOT / "tests" / "data" / "helm"
VALUES_FILES = sorted(VALUES_DIR.glob("*.yaml"))
BIN = Path(sys.executable).parent
# oldest and newest Kubernetes minor the chart is validated against
KUBE_VERSIONS = ("1.29.0", "1.37.0")

# The config file documented for the product (keys only matter here).
EXAMPLE_CONFIG = yaml.safe_load(
    """
hostname: mx.example.org
listeners:
  - name: mx
    address: 0.0.0.0:2525
    tls: {mode: starttls, cert: /etc/smtpguard/tls/tls.crt, key: /etc/smtpguard/tls/tls.key}
    proxy_protocol: {enabled: true, trusted_networks: [10.0.0.0/8]}
upstream: {url: "smtp://mta.mail.svc:25", xclient: auto, starttls: opportunistic, timeout: 60s}
policy: {dir: /etc/smtpguard/policies, watch: true}
metrics: {listen: 0.0.0.0:9108}
dns: {nameservers: []}
store: {url: memory}
shutdown_grace: 30s
logging: {format: json, level: info}
"""
)
# Example keys the real config model (smtpguard/config.py) does not have: never rendered.
EXAMPLE_KEYS_NOT_IN_MODEL = {"upstream.timeout"}  # the model has connect_/command_/data_timeout


def tool(name: str) -> str:
    """The venv's copy first (helm, kubernetes-validate), then PATH; skip/fail like conftest."""
    path = BIN / name
    if path.exists():
        return str(path)
    found = find_binary(name)
    if not found:
        missing_binary(name)
    return found


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} -> rc {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def helm_template(*extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(tool("helm"), "template", "rel", str(CHART), "--namespace", "mail", *extra, check=check)


def render(values: Path | None = None, *sets: str) -> list[dict[str, Any]]:
    args = ["-f", str(values)] if values else []
    for s in sets:
        args += ["--set", s]
    docs = yaml.safe_load_all(helm_template(*args).stdout)
    return [d for d in docs if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def smtpguard_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    cm = next(d for d in by_kind(docs, "ConfigMap") if "smtpguard.yaml" in d.get("data", {}))
    return yaml.safe_load(cm["data"]["smtpguard.yaml"])


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return int(duration[:-1]) * units[duration[-1]]


@pytest.fixture(scope="module", params=VALUES_FILES, ids=[p.stem for p in VALUES_FILES])
def values_file(request: pytest.FixtureRequest) -> Path:
    return request.param  # type: ignore[no-any-return]


def test_values_files_present() -> None:
    assert {p.stem for p in VALUES_FILES} >= {"default", "proxy-redis-tls-servicemonitor", "hpa-off-pdb-off"}


def test_helm_lint_strict(values_file: Path) -> None:
    proc = run(tool("helm"), "lint", "--strict", str(CHART), "-f", str(values_file))
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_rendered_manifests_pass_kubernetes_validate(values_file: Path, kube_version: str, tmp_path: Path) -> None:
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(helm_template("-f", str(values_file), "--kube-version", kube_version).stdout)
    proc = run(tool("kubernetes-validate"), "--strict", "-k", kube_version, str(rendered), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "ERROR" not in out, out
    # the only thing it may not know is the Prometheus Operator CRD
    warnings = [line for line in out.splitlines() if line.startswith("WARN")]
    assert all("kind ServiceMonitor" in w for w in warnings), warnings
    kinds = [d["kind"] for d in yaml.safe_load_all(rendered.read_text()) if d]
    assert out.count("passed for resource") == len(kinds) - kinds.count("ServiceMonitor")


def test_kubernetes_validate_catches_a_broken_manifest(tmp_path: Path) -> None:
    """Negative control: the validator really bites on our own rendered Deployment."""
    rendered = helm_template("--show-only", "templates/deployment.yaml").stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(rendered.replace("containerPort:", "contianerPort:"))
    proc = run(tool("kubernetes-validate"), "--strict", "-k", "1.30.0", str(bad), check=False)
    assert proc.returncode != 0
    assert "containerPort" in proc.stdout + proc.stderr


def _key_paths(node: Any, prefix: str = "") -> set[str]:
    if isinstance(node, dict):
        paths = set()
        for k, v in node.items():
            p = f"{prefix}.{k}" if prefix else k
            paths |= {p} | _key_paths(v, p)
        return paths
    if isinstance(node, list) and node and isinstance(node[0], dict):
        paths = set()
        for item in node:
            paths |= _key_paths(item, prefix + "[]")
        return paths
    return set()


def model_key_paths(model: type[BaseModel] = Config, prefix: str = "") -> set[str]:
    """Every key path smtpguard's pydantic config model accepts (lists of models as `key[]`)."""
    paths = set()
    for name, field in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        paths.add(path)
        annotation = field.annotation
        inner = get_args(annotation)[0] if get_origin(annotation) is list else annotation
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            paths |= model_key_paths(inner, path + "[]" if inner is not annotation else path)
    return paths


def test_rendered_config_matches_documented_keys(values_file: Path) -> None:
    config = smtpguard_config(render(values_file))
    rendered = _key_paths(config)
    example = _key_paths(EXAMPLE_CONFIG)
    model = model_key_paths()
    assert rendered <= model, f"keys smtpguard's config model does not know: {sorted(rendered - model)}"
    assert example - model == EXAMPLE_KEYS_NOT_IN_MODEL, "the documented example and the model diverged"
    # every documented key is rendered (tls cert/key only for TLS listeners, trusted_networks
    # only with PROXY protocol, policy.dir only with policy files)
    optional = {
        "listeners[].tls.cert",
        "listeners[].tls.key",
        "listeners[].proxy_protocol.trusted_networks",
        "policy.dir",
    }
    missing = example - EXAMPLE_KEYS_NOT_IN_MODEL - optional - rendered
    assert not missing, f"documented keys the chart does not render: {sorted(missing)}"
    for listener in config["listeners"]:
        assert listener["tls"]["mode"] in {"none", "starttls", "implicit"}
        if listener["tls"]["mode"] != "none":
            assert listener["tls"]["cert"] == "/etc/smtpguard/tls/tls.crt"
            assert listener["tls"]["key"] == "/etc/smtpguard/tls/tls.key"
    assert config["metrics"]["listen"].endswith(":9108")


def test_schema_enums_and_limits_follow_the_config_model() -> None:
    """values.schema.json repeats a few choices of smtpguard/config.py: catch drift."""
    from smtpguard import config as model

    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]

    def choices(cls: type[BaseModel], field: str) -> set[str]:
        return set(get_args(cls.model_fields[field].annotation))

    assert set(schema["upstream"]["properties"]["xclient"]["enum"]) == choices(model.UpstreamConfig, "xclient")
    assert set(schema["upstream"]["properties"]["xforward"]["enum"]) == choices(model.UpstreamConfig, "xforward")
    assert set(schema["upstream"]["properties"]["starttls"]["enum"]) == choices(model.UpstreamConfig, "starttls")
    assert set(schema["logging"]["properties"]["format"]["enum"]) == choices(model.LoggingConfig, "format")
    assert set(schema["logging"]["properties"]["level"]["enum"]) == choices(model.LoggingConfig, "level")
    assert set(schema["tls"]["properties"]["minVersion"]["enum"]) == choices(model.TLSConfig, "min_version")
    listener = schema["listeners"]["items"]["properties"]
    assert set(listener["tls"]["enum"]) == choices(model.TLSConfig, "mode")
    assert set(listener["limits"]["properties"]) == set(model.Limits.model_fields)


def write_rendered_config(docs: list[dict[str, Any]], where: Path) -> tuple[Path, Path]:
    """The config file and the policy directory exactly as the pod would see them."""
    config_file = where / "smtpguard.yaml"
    config_file.write_text(
        next(d for d in by_kind(docs, "ConfigMap") if "smtpguard.yaml" in d["data"])["data"]["smtpguard.yaml"]
    )
    policy_dir = where / "policies"
    policy_dir.mkdir()
    for cm in by_kind(docs, "ConfigMap"):
        if cm["metadata"]["name"].endswith("-policies"):
            for name, text in cm["data"].items():
                (policy_dir / name).write_text(text)
    return config_file, policy_dir


def smtpguard_check(config_file: Path, policy_dir: Path) -> subprocess.CompletedProcess[str]:
    """The product's own validator (`smtpguard check`), with no SMTPGUARD_* variables around."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPGUARD_")}
    cmd = [sys.executable, "-m", "smtpguard", "check", "--config", str(config_file), "--policy", str(policy_dir)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def test_smtpguard_check_accepts_the_rendered_config(values_file: Path, tmp_path: Path) -> None:
    config_file, policy_dir = write_rendered_config(render(values_file), tmp_path)
    proc = smtpguard_check(config_file, policy_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_smtpguard_check_rejects_a_tampered_config(tmp_path: Path) -> None:
    """Negative control: the validator really reads the rendered file (the example's
    `upstream.timeout` is exactly what it must refuse)."""
    config_file, policy_dir = write_rendered_config(render(), tmp_path)
    config = yaml.safe_load(config_file.read_text())
    config["upstream"]["timeout"] = "60s"
    config_file.write_text(yaml.safe_dump(config))
    proc = smtpguard_check(config_file, policy_dir)
    assert proc.returncode == 1
    assert f"{config_file}:" in proc.stderr and "upstream.timeout" in proc.stderr


def load_rendered_policy(policy_dir: Path) -> LoadedPolicy:
    """The product's policy loader, with the real check registry (what a pod does at start)."""
    return load_policy(policy_dir, CheckEnv(hostname="mx.example.org"), CheckRegistry.discover())


def test_rendered_policy_files_load(values_file: Path, tmp_path: Path) -> None:
    _config, policy_dir = write_rendered_config(render(values_file), tmp_path)
    files = sorted(p.name for p in policy_dir.iterdir())
    if not files:
        assert smtpguard_config(render(values_file))["policy"].get("dir") is None, "no files: embedded policy"
        return
    loaded = load_rendered_policy(policy_dir)
    assert {r.name for r in loaded.policy.rules} >= {"zen-listed", "spf-fail"}
    assert all(r.mode.value == "shadow" for r in loaded.policy.rules)


def test_a_bad_rendered_policy_is_refused(tmp_path: Path) -> None:
    """Negative control: the loader really reads the files the chart renders."""
    bad_rule = "rules:\n  - name: x\n    stage: connect\n    action: nonsense\n"
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"policy": {"files": {"10-bad.yaml": bad_rule}}}))
    _config, policy_dir = write_rendered_config(render(values), tmp_path)
    with pytest.raises(ConfigError) as exc:
        load_rendered_policy(policy_dir)
    assert "10-bad.yaml:4: unknown action 'nonsense'" in str(exc.value)


def test_rollout_doc_policy_example_loads(tmp_path: Path) -> None:
    """docs/rollout.md's shadow-mode example is a valid policy for the real loader."""
    text = (ROOT / "docs" / "rollout.md").read_text()
    example = re.search(r"```yaml\n# policies/20-reputation.yaml\n(.*?)```", text, re.S)
    assert example
    (tmp_path / "20-reputation.yaml").write_text(example.group(1))
    loaded = load_rendered_policy(tmp_path)
    assert [(r.name, r.mode.value) for r in loaded.policy.rules] == [("zen-listed", "shadow"), ("spf-fail", "shadow")]


def test_deployment_is_hardened_and_drains(values_file: Path) -> None:
    docs = render(values_file)
    deploy = one(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    c = container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    metrics_port = next(p for p in c["ports"] if p["name"] == "metrics")
    assert smtpguard_config(docs)["metrics"]["listen"].endswith(f":{metrics_port['containerPort']}")
    # /tmp is the only writable path
    tmp_mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp_mount["name"])
    # preStop sleep, then SIGTERM drain of shutdown_grace, all inside the grace period
    sleep_cmd = c["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep_cmd[0] == "sleep"
    grace = seconds(smtpguard_config(docs)["shutdown_grace"])
    assert pod["terminationGracePeriodSeconds"] > int(sleep_cmd[1]) + grace
    # policies mounted as a directory (subPath mounts never see ConfigMap updates)
    assert all("subPath" not in m for m in c["volumeMounts"])


def test_default_values_keep_the_client_ip() -> None:
    docs = render()
    smtp_service = next(s for s in by_kind(docs, "Service") if s["metadata"]["name"] == "rel-smtpguard")
    assert smtp_service["spec"]["type"] == "LoadBalancer"
    assert smtp_service["spec"]["externalTrafficPolicy"] == "Local"
    assert [p["port"] for p in smtp_service["spec"]["ports"]] == [25]
    config = smtpguard_config(docs)
    assert all(not lst["proxy_protocol"]["enabled"] for lst in config["listeners"])
    assert config["store"]["url"] == "memory"
    assert config["policy"]["watch"] is False  # policy.reload=rollout
    kinds = {d["kind"] for d in docs}
    assert {"HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    assert "ServiceMonitor" not in kinds and "Secret" not in kinds
    assert "replicas" not in one(docs, "Deployment")["spec"], "the HPA owns the replica count"


def test_proxy_protocol_redis_tls_servicemonitor() -> None:
    docs = render(VALUES_DIR / "proxy-redis-tls-servicemonitor.yaml")
    config = smtpguard_config(docs)
    for listener in config["listeners"]:
        assert listener["proxy_protocol"] == {
            "enabled": True,
            "trusted_networks": ["10.0.0.0/8", "192.168.0.0/16"],
            "timeout": "5s",
        }
    assert [lst["tls"]["mode"] for lst in config["listeners"]] == ["starttls", "starttls"]
    assert config["policy"]["watch"] is True
    smtp_service = next(s for s in by_kind(docs, "Service") if s["metadata"]["name"] == "rel-smtpguard")
    assert smtp_service["spec"]["externalTrafficPolicy"] == "Cluster"
    assert [p["port"] for p in smtp_service["spec"]["ports"]] == [25, 2526]
    c = container(docs)
    env = {e["name"]: e for e in c["env"]}
    assert env["SMTPGUARD_STORE"]["valueFrom"]["secretKeyRef"] == {"name": "smtpguard-redis", "key": "url"}
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    tls_volume = next(v for v in pod["volumes"] if v["name"] == "tls")
    assert tls_volume["secret"]["secretName"] == "mx-example-net-tls"
    assert not by_kind(docs, "Secret"), "existingSecret: the chart must not create one"
    sm = one(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    metrics_service = next(s for s in by_kind(docs, "Service") if s["metadata"]["name"] == "rel-smtpguard-metrics")
    assert sm["spec"]["selector"]["matchLabels"].items() <= metrics_service["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    # egress: upstream port parsed from the URL, Redis port, both DNS ports
    egress = one(docs, "NetworkPolicy")["spec"]["egress"]
    ports = {(p["port"], p["protocol"]) for rule in egress for p in rule["ports"]}
    assert {(10025, "TCP"), (6379, "TCP"), (53, "UDP"), (5353, "UDP")} <= ports
    # watch mode: policy edits must not roll the pods
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/policies" not in annotations and "checksum/config" in annotations


def test_hpa_and_pdb_off() -> None:
    docs = render(VALUES_DIR / "hpa-off-pdb-off.yaml")
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"}
    deploy = one(docs, "Deployment")
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 90
    secret = one(docs, "Secret")
    assert secret["type"] == "kubernetes.io/tls" and set(secret["data"]) == {"tls.crt", "tls.key"}
    assert smtpguard_config(docs)["store"]["url"] == "redis://redis.mail.svc.cluster.local:6379/0"
    smtp_service = next(s for s in by_kind(docs, "Service") if s["metadata"]["name"] == "rel-smtpguard")
    assert smtp_service["spec"]["type"] == "NodePort"
    assert smtp_service["spec"]["externalTrafficPolicy"] == "Local"


def test_policy_change_rolls_pods_in_rollout_mode() -> None:
    def checksum(*sets: str) -> str | None:
        docs = render(None, *sets)
        return one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"].get("checksum/policies")

    before = checksum("policy.files.a\\.yaml=one")
    assert before is not None
    assert checksum("policy.files.a\\.yaml=two") != before
    assert checksum("policy.reload=watch", "policy.files.a\\.yaml=two") is None


def additional(key: str) -> tuple[str, ...]:
    """An unknown key, as helm 3 and helm 4 word it."""
    return (f"Additional property {key} is not allowed", f"additional properties '{key}' not allowed")


def at(path: str) -> tuple[str, ...]:
    """A bad value at `a.b.c`, as helm 3 (`a.b.c:`) and helm 4 (`at '/a/b/c'`) word it."""
    return (f"{path}:", f"at '/{path.replace('.', '/')}'")


@pytest.mark.parametrize(
    ("sets", "messages"),
    [
        (["replicas=3"], additional("replicas")),
        (["service.externalTraficPolicy=Local"], additional("externalTraficPolicy")),
        (["clientIP.mode=proxy"], at("clientIP.mode")),
        (["upstream.xclient=yes"], at("upstream.xclient")),
        (["upstream.timeout=60s"], additional("timeout")),
        (["upstream.commandTimeout=60"], at("upstream.commandTimeout")),
        (["upstream.url=lmtp://mta:24"], at("upstream.url")),
        (["store.url=redis:/typo"], at("store.url")),
        (
            ["listeners[0].name=mx", "listeners[0].port=25", "listeners[0].servicePort=25", "listeners[0].tls=none"],
            at("listeners.0.port"),
        ),
        (["autoscaling.minReplica=2"], additional("minReplica")),
        (["clientIP.mode=proxyProtocol"], at("clientIP.proxyProtocol.trustedNetworks")),
    ],
)
def test_schema_rejects_typos_and_bad_values(sets: list[str], messages: tuple[str, ...]) -> None:
    args = [a for s in sets for a in ("--set", s)]
    for cmd in (("lint", "--strict", str(CHART)), ("template", "rel", str(CHART))):
        proc = run(tool("helm"), *cmd, *args, check=False)
        assert proc.returncode != 0, f"helm {cmd[0]} accepted {sets}"
        out = proc.stdout + proc.stderr
        assert any(m in out for m in messages), out


def render_notes(tmp_path: Path, values: Path | None = None) -> str:
    """NOTES.txt as `helm install` would print it: helm template never renders NOTES.txt, so a
    copy of the chart wraps the same template text in a ConfigMap."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "zz-notes.yaml").write_text(
        '{{- define "test.notes" }}' + notes + "{{ end }}\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ include "test.notes" . | toJson }}\n'
    )
    args = ["template", "rel", str(chart), "--namespace", "mail", "--show-only", "templates/zz-notes.yaml"]
    args += ["-f", str(values)] if values else []
    return str(yaml.safe_load(run(tool("helm"), *args).stdout)["data"]["notes"])


def test_notes_render(values_file: Path, tmp_path: Path) -> None:
    notes = render_notes(tmp_path, values_file)
    assert "rel-smtpguard" in notes and "Client IP mode:" in notes
    config = smtpguard_config(render(values_file))
    if config["listeners"][0]["proxy_protocol"]["enabled"]:
        assert "accepted only from\n  10.0.0.0/8, 192.168.0.0/16" in notes
    else:
        assert "externalTrafficPolicy: Local keeps the client address" in notes


def test_notes_warn_about_per_pod_state(tmp_path: Path) -> None:
    assert "WARNING: store.url=memory with several replicas" in render_notes(tmp_path)
    single = tmp_path / "single.yaml"
    single.write_text("replicaCount: 1\nautoscaling: {enabled: false}\n")
    assert "WARNING" not in render_notes(tmp_path / "x", single)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"listeners": [{"name": "mx", "port": 2525, "servicePort": 25, "tls": "starttls"}]},
            "set tls.existingSecret or both tls.certificate and tls.key",
        ),
        ({"terminationGracePeriodSeconds": 30}, "must exceed preStopSleepSeconds + shutdownGraceSeconds"),
        (
            {"listeners": [{"name": "smtps", "port": 4465, "servicePort": 465, "tls": "implicit"}],
             "tls": {"existingSecret": "x"},
             "clientIP": {"mode": "proxyProtocol", "proxyProtocol": {"trustedNetworks": ["10.0.0.0/8"]}}},
            "implicit TLS cannot be combined with clientIP.mode=proxyProtocol",
        ),
        ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "minReplicas must not exceed"),
        (
            {"metrics": {"port": 9108, "service": {"enabled": False}, "serviceMonitor": {"enabled": True}}},
            "serviceMonitor.enabled needs metrics.service.enabled",
        ),
    ],
)
def test_template_guards(values: dict[str, Any], message: str, tmp_path: Path) -> None:
    f = tmp_path / "values.yaml"
    f.write_text(json.dumps(values))
    proc = helm_template("-f", str(f), check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
