"""The installed package (a wheel, as in the container image) carries what `serve` needs on its
embedded defaults: the built-in default policy and py.typed. A source checkout hides such
gaps (editable installs see the repository), so this installs the real wheel."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_carries_the_default_policy(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("smtpguard-*.whl"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    code = ("import smtpguard, sys; from smtpguard.policy.builtin import builtin_source;"
            "src = builtin_source('default'); assert src.name.startswith(sys.argv[1]), src.name;"
            "print(src.name)")
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code, str(target)], env=env, capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (target / "smtpguard" / "py.typed").exists()
    check = subprocess.run([sys.executable, "-m", "smtpguard", "check"], env=env, capture_output=True, text=True,
                           cwd=tmp_path, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
