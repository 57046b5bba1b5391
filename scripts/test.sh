#!/usr/bin/env bash
# THE test command: install what is missing (scripts/setup.sh), then lint, type-check and test.
#
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh -m "not integration" -x   # extra args go to pytest
#
# All three checks run even if an earlier one fails; the exit status is non-zero if any step
# (setup, ruff, mypy, pytest) failed. CI (.ci/run) runs this as root with CI=true, where a missing
# server binary makes the integration tests fail instead of skip.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 1

bash scripts/setup.sh || { echo "[test] setup failed" >&2; exit 1; }

# the daemons live in sbin; helm and the Python tools in .venv/bin
export PATH="$REPO/.venv/bin:$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export PYTHONDONTWRITEBYTECODE=1

failed=()
step() {
  local name="$1"; shift
  echo "[test] === $name: $*" >&2
  local start=$SECONDS
  if "$@"; then
    echo "[test] --- $name ok ($((SECONDS - start)) s)" >&2
  else
    echo "[test] --- $name FAILED (rc $?, $((SECONDS - start)) s)" >&2
    failed+=("$name")
  fi
}

step ruff .venv/bin/ruff check .
step mypy .venv/bin/mypy
step pytest .venv/bin/pytest -q "$@"

if ((${#failed[@]})); then
  echo "[test] FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "[test] all passed" >&2
