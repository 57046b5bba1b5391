"""smtpguard's configuration: one YAML file, validated, with flags and env vars on top.

Precedence (highest first): command-line flags, `SMTPGUARD_*` environment variables, the config
file, the embedded defaults. Every validation error is reported as `file:line: message`.
With no file and no flags the embedded default applies: listen on 127.0.0.1:2525 and deliver
accepted mail into ./smtpguard-mail/ (a Maildir) through the built-in upstream.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from smtpguard.errors import ConfigError, Problem
from smtpguard.units import parse_duration, parse_size
from smtpguard.yamlfile import load_yaml, locate

Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]


def _check_networks(value: list[str]) -> list[str]:
    for item in value:
        ipaddress.ip_network(item, strict=False)
    return value


Networks = Annotated[list[str], AfterValidator(_check_networks)]  # CIDR networks or addresses

DEFAULT_LISTEN = "127.0.0.1:2525"
DEFAULT_UPSTREAM = "maildir:./smtpguard-mail"
DEFAULT_METRICS = "127.0.0.1:9108"


def split_hostport(value: str, default_port: int | None = None) -> tuple[str, int]:
    """`127.0.0.1:25`, `[::1]:25`, `mx.example:25` -> (host, port)."""
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if not sep:
            raise ValueError(f"{value!r}: missing ']'")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = text, ""
    if not port_text:
        if default_port is None:
            raise ValueError(f"{value!r} needs a port, like 127.0.0.1:2525")
        return host, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r}: {port_text!r} is not a port number")
    return host or "0.0.0.0", int(port_text)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSConfig(_Model):
    mode: Literal["none", "starttls", "implicit"] = "none"
    cert: Path | None = None
    key: Path | None = None
    min_version: Literal["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"] = "TLSv1.2"

    @model_validator(mode="after")
    def _cert_needed(self) -> TLSConfig:
        if self.mode != "none" and (self.cert is None or self.key is None):
            raise ValueError(f"tls mode {self.mode!r} needs both 'cert' and 'key'")
        return self


class ProxyProtocolConfig(_Model):
    enabled: bool = False
    trusted_networks: Networks = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    timeout: Duration = 5.0


class Limits(_Model):
    """Per-listener limits; every value has a postmaster-grade default."""

    max_connections: int = Field(1000, ge=1)  # open sessions on this listener (421 4.7.0 beyond)
    max_connections_per_ip: int = Field(20, ge=1)
    max_message_size: Annotated[int, BeforeValidator(parse_size), Field(ge=1024)] = 25_000_000  # SIZE; 552 5.3.4
    max_line_length: int = Field(998, ge=78, le=1_000_000)  # message lines, CRLF excluded (RFC 5322)
    max_command_length: int = Field(2048, ge=512, le=65536)  # command lines incl. ESMTP parameters
    max_recipients: int = Field(100, ge=1)  # 452 4.5.3 beyond
    bad_command_budget: int = Field(10, ge=1)  # unknown/bad commands before 421 and close
    idle_timeout: PositiveDuration = 300.0  # per command (RFC 5321 4.5.3.2.7)
    data_timeout: PositiveDuration = 600.0  # the whole DATA upload
    greeting_delay: Duration = 0.0  # >0: early-talker detection window before the banner
    greeting_delay_skip: Networks = Field(default_factory=list)  # networks that get the banner at once


class ListenerConfig(_Model):
    name: str = "smtp"
    address: str = DEFAULT_LISTEN
    tls: TLSConfig = TLSConfig()
    proxy_protocol: ProxyProtocolConfig = ProxyProtocolConfig()
    limits: Limits = Limits()
    # bare LF / bare CR / NUL in DATA or commands: rejected (5xx) unless the client is here
    normalize_networks: Networks = Field(default_factory=list)
    smtputf8: bool = True  # advertised only if the upstream supports it too
    # commands sent ahead when PIPELINING does not allow it: 554 5.5.0 and close (as Postfix 3.9+);
    # false leaves the decision to policy (outcome protocol.pipelining)
    forbid_unauth_pipelining: bool = True
    dsn: bool = True  # advertised only if the upstream supports it too

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        split_hostport(value)
        return value

    @model_validator(mode="after")
    def _proxy_and_implicit_tls(self) -> ListenerConfig:
        if self.proxy_protocol.enabled and self.tls.mode == "implicit":
            raise ValueError("the PROXY protocol cannot be combined with implicit TLS on one listener "
                             "(TLS would start before the PROXY header); use starttls, or terminate TLS "
                             "on the load balancer")
        return self


class UpstreamConfig(_Model):
    url: str = DEFAULT_UPSTREAM  # smtp://host:port or maildir:PATH (built-in upstream)
    xclient: Literal["auto", "off"] = "auto"
    xforward: Literal["auto", "off"] = "auto"
    starttls: Literal["opportunistic", "required", "off"] = "opportunistic"
    tls_verify: bool = False  # verify the upstream certificate (on for a remote MTA)
    helo_name: str | None = None  # our EHLO name to the upstream (default: hostname)
    connect_timeout: Duration = 30.0
    command_timeout: Duration = 60.0
    data_timeout: Duration = 600.0  # final reply after end of data (RFC 5321: 10 minutes)
    ready_grace: Duration = 30.0  # /readyz turns false only after this long without upstream

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value.startswith("maildir:"):
            if not value[len("maildir:"):]:
                raise ValueError("maildir: needs a directory, like maildir:./smtpguard-mail")
            return value
        if value.startswith("smtp://"):
            split_hostport(value[len("smtp://"):].rstrip("/"), 25)
            return value
        raise ValueError(f"{value!r}: upstream must be smtp://HOST:PORT or maildir:DIR")


class PolicyConfig(_Model):
    dir: Path | None = None  # None: the embedded default policy
    watch: bool = True


class MetricsConfig(_Model):
    listen: str | None = DEFAULT_METRICS  # HOST:PORT, or null / "off" to disable

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is None or value.strip().lower() in ("off", "none", ""):
            return None
        split_hostport(value)
        return value


class DNSConfig(_Model):
    nameservers: list[str] = Field(default_factory=list)  # HOST:PORT; empty = /etc/resolv.conf
    timeout: Duration = 3.0


class StoreConfig(_Model):
    url: str = "memory"  # or redis://HOST:PORT/DB
    timeout: Duration = 0.2  # per Redis operation; a slow or dead Redis is an error, never a hang
    prefix: str = "smtpguard:"  # every key starts with this (share one Redis between deployments)
    pool_size: int = Field(64, ge=1)
    failures_to_open: int = Field(3, ge=1)  # consecutive failures before the circuit opens
    cooldown: Duration = 2.0  # seconds before a half-open probe

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value != "memory" and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"{value!r}: store must be memory or redis://HOST:PORT/DB")
        return value


class LoggingConfig(_Model):
    format: Literal["auto", "json", "text"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"
    decisions: bool = True  # one JSON decision record per transaction


class Config(_Model):
    hostname: str = Field(default_factory=socket.gethostname)
    listeners: list[ListenerConfig] = Field(default_factory=lambda: [ListenerConfig()])
    upstream: UpstreamConfig = UpstreamConfig()
    policy: PolicyConfig = PolicyConfig()
    metrics: MetricsConfig = MetricsConfig()
    dns: DNSConfig = DNSConfig()
    store: StoreConfig = StoreConfig()
    logging: LoggingConfig = LoggingConfig()
    max_connections: int = Field(5000, ge=1)  # all listeners together
    # message bytes held in memory across sessions (at least one 1 MB message)
    data_memory_budget: Annotated[int, BeforeValidator(parse_size), Field(ge=1_000_000)] = 512_000_000
    shutdown_grace: Duration = 30.0
    authserv_id: str | None = None  # Authentication-Results id (default: hostname)

    @field_validator("hostname", "authserv_id")
    @classmethod
    def _hostname(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", value):
            raise ValueError(f"{value!r} is not a hostname (letters, digits, dots and hyphens)")
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        names = [listener.name for listener in self.listeners]
        if len(set(names)) != len(names):
            raise ValueError("listener names must be unique")
        if not self.listeners:
            raise ValueError("at least one listener is needed")
        return self


ENV_FLAGS = {
    "SMTPGUARD_LISTEN": "listen",
    "SMTPGUARD_UPSTREAM": "upstream",
    "SMTPGUARD_POLICY": "policy",
    "SMTPGUARD_METRICS": "metrics",
    "SMTPGUARD_STORE": "store",
    "SMTPGUARD_DNS": "dns",
    "SMTPGUARD_HOSTNAME": "hostname",
}


def load_config(
    path: Path | None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    """Read, merge and validate. Raises ConfigError with `file:line:` problems."""
    data: dict[str, Any] = {}
    lines: dict[tuple[Any, ...], int] = {}
    filename = str(path) if path else "<defaults>"
    if path is not None:
        loaded, lines = load_yaml(path)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(Problem(filename, 1, "the config file must be a mapping of settings"))
        data = loaded
    flags = dict(overrides or {})
    env = os.environ if environ is None else environ
    for var, flag in ENV_FLAGS.items():
        if env.get(var) and flags.get(flag) in (None, []):
            value: Any = env[var]
            if flag in ("listen", "dns"):
                value = [v for v in value.split(",") if v]
            flags[flag] = value
    _apply_flags(data, flags)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = [p for p in err["loc"]]
            where = ".".join(str(p) for p in loc) or "(top level)"
            line = locate(lines, loc) if path is not None else None
            msg = err["msg"].removeprefix("Value error, ")
            msg = f"unknown setting {where!r}" if err["type"] == "extra_forbidden" else f"{where}: {msg}"
            problems.append(Problem(filename if path is not None else "<command line or SMTPGUARD_* environment>",
                                    line, msg))
        raise ConfigError(problems) from None


def environment_problems(config: Config) -> list[Problem]:
    """What the config names on this machine that is not there (warnings for `check`, which may
    run elsewhere than `serve`, e.g. on a rendered Helm config; `serve` refuses to start)."""
    problems = []
    for listener in config.listeners:
        if listener.tls.mode == "none":
            continue
        for path in (listener.tls.cert, listener.tls.key):
            if path is not None and not os.access(path, os.R_OK):
                problems.append(Problem(None, None, f"listener {listener.name}: cannot read {path} "
                                        "(missing or not readable here)", "warning"))
    return problems


def _apply_flags(data: dict[str, Any], flags: dict[str, Any]) -> None:
    listen = flags.get("listen")
    if listen:
        existing = data.get("listeners") or []
        listeners = []
        for i, address in enumerate(listen):
            base = dict(existing[i]) if i < len(existing) and isinstance(existing[i], dict) else {}
            base["address"] = address
            base.setdefault("name", "smtp" if i == 0 else f"smtp{i + 1}")
            listeners.append(base)
        data["listeners"] = listeners
    if flags.get("upstream"):
        data.setdefault("upstream", {})
        data["upstream"] = {**data["upstream"], "url": flags["upstream"]}
    if flags.get("policy"):
        data["policy"] = {**data.get("policy", {}), "dir": flags["policy"]}
    if flags.get("metrics"):
        value = flags["metrics"]
        data["metrics"] = {"listen": None if value in ("off", "none", "") else value}
    if flags.get("store"):
        data["store"] = {**data.get("store", {}), "url": flags["store"]}
    if flags.get("dns"):
        data["dns"] = {**data.get("dns", {}), "nameservers": list(flags["dns"])}
    if flags.get("hostname"):
        data["hostname"] = flags["hostname"]
