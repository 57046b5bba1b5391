"""Shared state the per-connection protocol objects read: one `ProxyContext` per process and
one `ListenerContext` per listener. Holds counters for connection caps and the memory budget.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from smtpguard import metrics
from smtpguard.config import Config, ListenerConfig
from smtpguard.lists import CidrSet
from smtpguard.policy.verdict import PolicyGate
from smtpguard.reply import Reply
from smtpguard.upstream import Upstream

if TYPE_CHECKING:
    from smtpguard.protocol.server import GuardSMTP

_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXZ"


_ID_TABLE = bytes(ord(_ALPHABET[b % len(_ALPHABET)]) for b in range(256))


def new_id(length: int = 12) -> str:
    """A short random id for sessions and transactions: `length` unambiguous characters from
    the OS's random source (~4.9 bits each; 12 give ~58 bits), one C-level translate."""
    return os.urandom(length).translate(_ID_TABLE).decode("ascii")


@dataclass(slots=True)
class ProxyContext:
    config: Config
    gate: PolicyGate
    upstream: Upstream
    hostname: str
    authserv_id: str
    auth_results_checks: tuple[str, ...] = ("iprev", "spf", "dkim", "dmarc", "arc")
    sessions: set[GuardSMTP] = field(default_factory=set)
    per_ip: Counter[str] = field(default_factory=Counter)
    data_bytes: int = 0
    shutting_down: bool = False
    decision_log: Any = None  # logging.Logger for decision records

    def reserve_data(self, size: int) -> bool:
        if self.data_bytes + size > self.config.data_memory_budget:
            return False
        self.data_bytes += size
        return True

    def release_data(self, size: int) -> None:
        self.data_bytes = max(0, self.data_bytes - size)


@dataclass(slots=True)
class ListenerContext:
    proxy: ProxyContext
    cfg: ListenerConfig
    tls_context: ssl.SSLContext | None
    implicit_tls: bool
    normalize_networks: CidrSet
    greeting_skip: CidrSet
    proxy_trusted: CidrSet
    banner: Reply
    active: int = 0
    # EHLO replies by what is advertised (SMTPUTF8, STARTTLS, DSN): built and validated once
    ehlo_replies: dict[tuple[bool, bool, bool], Reply] = field(default_factory=dict)
    _command_counters: dict[tuple[str, str], Any] = field(default_factory=dict)

    def count_reply(self, verb: str, reply_class: str) -> None:
        """COMMANDS{listener, verb, reply_class} += 1, with the labelled child cached."""
        key = (verb, reply_class)
        child = self._command_counters.get(key)
        if child is None:
            child = self._command_counters[key] = metrics.COMMANDS.labels(self.cfg.name, verb, reply_class)
        child.inc()

    @property
    def name(self) -> str:
        return self.cfg.name

    @staticmethod
    def build(proxy: ProxyContext, cfg: ListenerConfig, tls_context: ssl.SSLContext | None) -> ListenerContext:
        return ListenerContext(
            proxy=proxy,
            cfg=cfg,
            tls_context=tls_context,
            implicit_tls=cfg.tls.mode == "implicit",
            normalize_networks=CidrSet(str(ipaddress.ip_network(n, strict=False)) for n in cfg.normalize_networks),
            greeting_skip=CidrSet(str(ipaddress.ip_network(n, strict=False)) for n in cfg.limits.greeting_delay_skip),
            proxy_trusted=CidrSet(
                str(ipaddress.ip_network(n, strict=False)) for n in cfg.proxy_protocol.trusted_networks),
            banner=Reply(220, None, f"{proxy.hostname} ESMTP"),
        )
