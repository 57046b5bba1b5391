"""Process orchestration: build everything from a Config, run the listeners, drain on SIGTERM.

One asyncio server per listener (no aiosmtpd Controller), a metrics/health HTTP listener, an
upstream probe loop (for readiness and to learn the upstream's extensions before the first
EHLO), policy hot reload on SIGHUP and on file changes. SIGTERM/SIGINT: stop accepting,
421 4.3.2 to idle sessions, let sessions in DATA finish for `shutdown_grace`, abort the rest,
exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import os
import platform
import signal
import ssl
import time
from pathlib import Path
from typing import Any

from smtpguard import __version__, metrics
from smtpguard.checks.base import CheckEnv
from smtpguard.config import Config, ListenerConfig, split_hostport
from smtpguard.errors import ConfigError, Problem
from smtpguard.httpd import HealthServer
from smtpguard.protocol.context import ListenerContext, ProxyContext
from smtpguard.protocol.server import GuardSMTP
from smtpguard.upstream import Upstream
from smtpguard.upstream.maildir import MaildirUpstream
from smtpguard.upstream.smtp import SMTPUpstream

log = logging.getLogger("smtpguard")

_TLS_VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1, "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}


def build_tls_context(cfg: ListenerConfig) -> ssl.SSLContext | None:
    if cfg.tls.mode == "none":
        return None
    assert cfg.tls.cert is not None and cfg.tls.key is not None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = _TLS_VERSIONS[cfg.tls.min_version]
    ctx.verify_mode = ssl.CERT_NONE
    ctx.check_hostname = False
    try:
        ctx.load_cert_chain(str(cfg.tls.cert), str(cfg.tls.key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(Problem(None, None, f"listener {cfg.name}: cannot load TLS certificate {cfg.tls.cert} "
                                  f"and key {cfg.tls.key}: {exc.strerror or exc}")) from None
    return ctx


def build_upstream(config: Config) -> Upstream:
    url = config.upstream.url
    if url.startswith("maildir:"):
        return MaildirUpstream(Path(url[len("maildir:"):]))
    return SMTPUpstream(config.upstream, config.hostname)


def build_check_env(config: Config) -> CheckEnv:
    from smtpguard.dns.resolver import DNSResolver
    from smtpguard.store.factory import create_store

    dns = DNSResolver(nameservers=list(config.dns.nameservers) or None, timeout=config.dns.timeout)
    store = create_store(config.store.url, timeout=config.store.timeout, prefix=config.store.prefix,
                         pool_size=config.store.pool_size, failures_to_open=config.store.failures_to_open,
                         cooldown=config.store.cooldown)
    local = set()
    for listener in config.listeners:
        host, _ = split_hostport(listener.address)
        with contextlib.suppress(ValueError):
            if not ipaddress.ip_address(host).is_unspecified:
                local.add(host)
    return CheckEnv(hostname=config.hostname, local_addresses=frozenset(local), dns=dns, store=store)


def build_policy(config: Config, env: CheckEnv) -> Any:
    from smtpguard.policy.runner import PolicyRunner

    runner = PolicyRunner(config.policy.dir, env, builtin_policy=None if config.policy.dir else "default")
    runner.load()
    return runner


class App:
    def __init__(self, config: Config, gate: Any | None = None) -> None:
        self.config = config
        self.upstream = build_upstream(config)
        self.env: CheckEnv | None = None
        if gate is None:
            self.env = build_check_env(config)
            gate = build_policy(config, self.env)
        self.gate = gate
        self.proxy = ProxyContext(
            config=config, gate=gate, upstream=self.upstream, hostname=config.hostname,
            authserv_id=config.authserv_id or config.hostname,
            decision_log=logging.getLogger("smtpguard.decision") if config.logging.decisions else None,
        )
        self.servers: list[tuple[str, asyncio.Server]] = []
        self.health: HealthServer | None = None
        self.stop_event = asyncio.Event()
        self.reload_event = asyncio.Event()
        self.upstream_ok_at: float | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    # ------------------------------------------------------------------ start
    async def start(self) -> None:
        metrics.initialise([listener.name for listener in self.config.listeners])
        metrics.BUILD_INFO.info({"version": __version__, "python": platform.python_version(),
                                 "loop": type(asyncio.get_running_loop()).__module__.split(".")[0]})
        if hasattr(self.gate, "start"):
            await self.gate.start()
        self._export_policy_info()
        if await self.upstream.probe():
            self.upstream_ok_at = time.monotonic()
        loop = asyncio.get_running_loop()
        for cfg in self.config.listeners:
            host, port = split_hostport(cfg.address)
            tls = build_tls_context(cfg)
            listener = ListenerContext.build(self.proxy, cfg, tls)
            server = await loop.create_server(
                lambda listener=listener: GuardSMTP(listener),
                host=host, port=port, reuse_address=True, backlog=1024,
                ssl=tls if cfg.tls.mode == "implicit" else None,
            )
            self.servers.append((cfg.name, server))
            metrics.LISTENERS_UP.labels(cfg.name).set(1)
            addresses = ", ".join(_sockname(s) for s in server.sockets)
            log.info("listening on %s (listener %s, tls %s%s)", addresses, cfg.name, cfg.tls.mode,
                     ", PROXY protocol" if cfg.proxy_protocol.enabled else "")
        if self.config.metrics.listen:
            host, port = split_hostport(self.config.metrics.listen)
            self.health = HealthServer(self.readiness_problems)
            await self.health.start(host, port)
            log.info("metrics and health on http://%s:%d/metrics", host, port)
        log.info("upstream: %s%s; policy: %s (version %s, %d rules)", self.upstream.description,
                 " (built-in Maildir delivery: no MTA needed)" if isinstance(self.upstream, MaildirUpstream) else "",
                 self.config.policy.dir or "embedded default", getattr(self.gate, "version", "?"),
                 getattr(self.gate, "rule_count", 0))
        self._tasks.append(asyncio.create_task(self._probe_loop()))
        self._tasks.append(asyncio.create_task(self._reload_loop()))
        if "." not in self.config.hostname:
            log.warning("hostname %r is not a fully-qualified domain name; the banner, EHLO and "
                        "Authentication-Results use it: set `hostname:` in the config", self.config.hostname)
        if self.config.policy.dir is not None and self.config.policy.watch and hasattr(self.gate, "watch"):
            self._tasks.append(asyncio.create_task(self.gate.watch(self.stop_event)))
        for sig, handler in ((signal.SIGTERM, self.stop_event.set), (signal.SIGINT, self.stop_event.set),
                             (signal.SIGHUP, self.reload_event.set)):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, handler)

    def _export_policy_info(self) -> None:
        metrics.POLICY_RULES.set(getattr(self.gate, "rule_count", 0))
        metrics.POLICY_INFO.info({"version": str(getattr(self.gate, "version", "none"))})

    async def _reload_loop(self) -> None:
        while True:
            await self.reload_event.wait()
            self.reload_event.clear()
            if hasattr(self.gate, "reload"):
                ok = await self.gate.reload() if asyncio.iscoroutinefunction(self.gate.reload) else self.gate.reload()
                log.info("policy reload %s (version %s)", "ok" if ok else "failed, old policy kept",
                         getattr(self.gate, "version", "?"))
                self._export_policy_info()

    async def _probe_loop(self) -> None:
        # probe often enough that a healthy upstream is never older than ready_grace
        interval = max(0.5, min(10.0, self.config.upstream.ready_grace / 3))
        while True:
            await asyncio.sleep(interval)
            if await self.upstream.probe():
                self.upstream_ok_at = time.monotonic()

    def readiness_problems(self) -> list[str]:
        problems = []
        if self.proxy.shutting_down:
            problems.append("shutting down")
        if not self.servers:
            problems.append("listeners not up")
        if getattr(self.gate, "rule_count", None) is None:
            problems.append("no policy loaded")
        grace = self.config.upstream.ready_grace
        if self.upstream_ok_at is None:
            problems.append(f"upstream {self.upstream.description} not reachable yet (no successful probe)")
        elif time.monotonic() - self.upstream_ok_at > grace:
            problems.append(f"upstream {self.upstream.description} unreachable for more than {grace:g}s")
        return problems

    # ------------------------------------------------------------------ stop
    async def run(self) -> None:
        await self.start()
        await self.stop_event.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        log.info("shutting down: no new connections, draining sessions (grace %gs)", self.config.shutdown_grace)
        self.proxy.shutting_down = True
        metrics.SHUTTING_DOWN.set(1)
        for name, server in self.servers:
            server.close()
            metrics.LISTENERS_UP.labels(name).set(0)
        for session in list(self.proxy.sessions):
            session.begin_shutdown()
        handlers = [t for s in self.proxy.sessions if (t := s._handler_coroutine) is not None and not t.done()]
        if handlers:  # sessions in DATA finish their transaction, within the grace period
            await asyncio.wait(handlers, timeout=self.config.shutdown_grace)
        for session in list(self.proxy.sessions):
            session.abort()
        for task in self._tasks:
            task.cancel()
        if self.health is not None:
            await self.health.close()
        if hasattr(self.gate, "close"):
            with contextlib.suppress(Exception):
                await self.gate.close()
        if self.env is not None:
            for service in (self.env.dns, self.env.store):
                closer = getattr(service, "close", None)
                if closer is not None:
                    with contextlib.suppress(Exception):
                        result = closer()
                        if asyncio.iscoroutine(result):
                            await result
        log.info("stopped")


def _sockname(sock: Any) -> str:
    name = sock.getsockname()
    return f"[{name[0]}]:{name[1]}" if ":" in name[0] else f"{name[0]}:{name[1]}"


def run(config: Config, gate: Any | None = None) -> None:
    """Run until SIGTERM/SIGINT, on uvloop when it is installed."""
    async def main() -> None:
        app = App(config, gate)
        await app.start()
        # everything loaded at start-up (modules, policy, PSL) lives for the whole process: keep
        # it out of the cyclic collector's generations, and collect young objects less often
        # (sessions allocate many short-lived objects; the default threshold of 700 made the
        # collector walk every live session dozens of times a second under load)
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        await app.stop_event.wait()
        await app.shutdown()

    try:
        if os.environ.get("SMTPGUARD_NO_UVLOOP"):  # profiling: cProfile sees into asyncio only
            raise ImportError
        import uvloop
    except ImportError:
        asyncio.run(main())
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
