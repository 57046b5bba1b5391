"""Run a real `smtpguard serve` process for integration tests.

`Smtpguard.start(workdir, config=..., upstream=..., policy_dir=...)` writes a config file,
starts `python -m smtpguard serve` on free loopback ports, waits until the SMTP listener
greets and /healthz answers, and stops the process by its PID (SIGTERM, then SIGKILL).
Its log (JSON lines) is kept in `workdir/smtpguard.log`; `decisions()` parses the decision
records, `metrics()` scrapes /metrics into {series: value}.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from realservers import free_port, tcp_accepts, wait_for

REPO = Path(__file__).resolve().parent.parent
_LIVE: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    """Safety net: a test that died before its teardown must not leave smtpguard running."""
    for proc in list(_LIVE):
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)


class Smtpguard:
    def __init__(self, workdir: Path, port: int, metrics_port: int, proc: subprocess.Popen[bytes],
                 log_path: Path, config_path: Path, extra_ports: Mapping[str, int]) -> None:
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.port = port
        self.metrics_port = metrics_port
        self.proc = proc
        self.log_path = log_path
        self.config_path = config_path
        self.ports = dict(extra_ports)

    @classmethod
    def start(cls, workdir: Path, *, upstream: str, config: Mapping[str, Any] | None = None,
              policy_dir: Path | None = None, no_policy: bool = False, args: Sequence[str] = (),
              listeners: Sequence[Mapping[str, Any]] | None = None, wait: bool = True,
              env: Mapping[str, str] | None = None, output_pipe: bool = False) -> Smtpguard:
        """`output_pipe`: stdout/stderr go to `proc.stdout` (a pipe the test reads, or not)
        instead of the log file."""
        workdir.mkdir(parents=True, exist_ok=True)
        port, metrics_port = free_port(), free_port()
        data: dict[str, Any] = {"hostname": "guard.test", "logging": {"format": "json", "level": "info"}}
        data.update(config or {})
        # never let a test's DNS traffic leave the machine: by default a loopback port where
        # nothing listens (queries fail at once); tests that need DNS pass an nsd
        data.setdefault("dns", {"nameservers": [f"127.0.0.1:{free_port()}"], "timeout": 1})
        extra_ports: dict[str, int] = {}
        if listeners is None:
            data.setdefault("listeners", [{"name": "smtp", "address": f"127.0.0.1:{port}"}])
        else:
            out = []
            for i, listener in enumerate(listeners):
                lport = port if i == 0 else free_port()
                extra_ports[str(listener.get("name", f"l{i}"))] = lport
                out.append({**listener, "address": f"127.0.0.1:{lport}"})
            data["listeners"] = out
        data.setdefault("upstream", {})
        data["upstream"] = {"url": upstream, **data["upstream"]}
        data["metrics"] = {"listen": f"127.0.0.1:{metrics_port}"}
        if policy_dir is not None:
            data.setdefault("policy", {})["dir"] = str(policy_dir)
        config_path = workdir / "smtpguard.yaml"
        config_path.write_text(yaml.safe_dump(data))
        log_path = workdir / "smtpguard.log"
        cmd = [sys.executable, "-m", "smtpguard", "serve", "--config", str(config_path), *args]
        if no_policy:
            cmd.append("--no-policy")
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        if output_pipe:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=workdir,
                                    env=environment, start_new_session=True)
        else:
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=environment,
                                        start_new_session=True)
        _LIVE.add(proc)
        sg = cls(workdir, port, metrics_port, proc, log_path, config_path, extra_ports)
        if wait:
            try:
                sg.wait_ready()
            except BaseException:
                sg.stop(timeout=5)
                raise
        return sg

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"smtpguard exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            return tcp_accepts(self.port) and self._http("/healthz")[0] == 200
        wait_for(ready, timeout=timeout, what="smtpguard to listen")

    def _http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def readyz(self) -> tuple[int, str]:
        return self._http("/readyz")

    def metrics_text(self) -> str:
        return self._http("/metrics")[1]

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for line in self.metrics_text().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def metric(self, series: str) -> float:
        return self.metrics().get(series, 0.0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def decisions(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("event") == "transaction"]

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        _LIVE.discard(self.proc)
        return self.proc.returncode

    def __enter__(self) -> Smtpguard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
