"""`relay`: open-relay protection -- is this recipient ours, or may this client relay?

Options:
- `local_domains`: domains we receive mail for: a list, or `"@file"` (one per line, relative
  to the policy directory); `.example.com` also matches every subdomain;
- `relay_networks`: client networks allowed to send to any domain (CIDR list or `"@file"`).

Outcomes (exactly one per recipient):
- `relay.local`: the recipient's domain is local (a bare `postmaster` is always local);
- `relay.relay_client`: not local, but the client is in `relay_networks`;
- `relay.denied`: not local and the client may not relay -- reject it;
- `relay.unconfigured`: no `local_domains` configured, so this check cannot tell: the
  upstream MTA's own relay restrictions decide (smtpguard forwards the RCPT and relays the
  upstream's answer).

Invariants: pure after loading (lists are read once, when the policy is (re)loaded, and are
part of its version); per-recipient scope; never does I/O in `run`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import ValidationInfo, field_validator

from smtpguard.checks.base import CheckBase, CheckContext, CheckEnv, CheckOptions, CheckResult
from smtpguard.errors import ConfigError
from smtpguard.lists import CidrSet, DomainSet, parse_network, read_list_file
from smtpguard.stage import Scope, Stage


def _entries(value: Any, info: ValidationInfo, what: str) -> tuple[str, ...]:
    """A list of strings, or `"@file"` read relative to the policy directory."""
    if isinstance(value, str):
        if not value.startswith("@"):
            return (value,)
        base = (info.context or {}).get("policy_dir") or Path.cwd()
        path = Path(value[1:])
        path = path if path.is_absolute() else Path(base) / path
        try:
            return tuple(e for _, e in read_list_file(path))
        except ConfigError as exc:
            raise ValueError(f"{what} list {value[1:]!r}: {exc.problems[0].message}") from None
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        out: list[str] = []
        for v in value:
            out.extend(_entries(v, info, what) if v.startswith("@") else (v,))
        return tuple(out)
    raise ValueError(f"{what} is a list of strings or an @file reference")


class Options(CheckOptions):
    local_domains: tuple[str, ...] = ()
    relay_networks: tuple[str, ...] = ()

    @field_validator("local_domains", mode="before")
    @classmethod
    def _domains(cls, value: Any, info: ValidationInfo) -> tuple[str, ...]:
        return _entries(value, info, "local_domains")

    @field_validator("relay_networks", mode="before")
    @classmethod
    def _networks(cls, value: Any, info: ValidationInfo) -> tuple[str, ...]:
        entries = _entries(value, info, "relay_networks")
        for e in entries:
            parse_network(e)  # ValueError names the bad entry
        return entries


class RelayCheck(CheckBase):
    name: ClassVar[str] = "relay"
    stage: ClassVar[Stage] = Stage.RCPT
    scope: ClassVar[Scope] = Scope.RECIPIENT
    Options: ClassVar[type[CheckOptions]] = Options
    OUTCOMES: ClassVar[tuple[str, ...]] = ("local", "relay_client", "denied", "unconfigured")

    def __init__(self, options: CheckOptions, env: CheckEnv) -> None:
        super().__init__(options, env)
        assert isinstance(options, Options)
        self._local = DomainSet(options.local_domains)
        self._relay = CidrSet(options.relay_networks)

    async def run(self, ctx: CheckContext) -> CheckResult:
        t = ctx.transaction
        recipient = (t.recipient if t is not None else None) or ""
        if not len(self._local):
            return CheckResult.of(self.outcome("unconfigured"))
        domain = t.recipient_domain if t is not None else None
        if domain is None and recipient.lower() == "postmaster":
            return CheckResult.of(self.outcome("local"))
        if domain is not None and domain in self._local:
            return CheckResult.of(self.outcome("local"))
        if ctx.session.client_ip in self._relay:
            return CheckResult.of(self.outcome("relay_client"))
        return CheckResult.of(self.outcome("denied"))


CHECK = RelayCheck
