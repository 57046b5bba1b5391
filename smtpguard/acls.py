"""Static access lists for the `acl`, `acl_mail` and `acl_rcpt` checks.

A named list tests one fact against entries given inline and/or in list files (see
`smtpguard.lists`): `client_ip` against CIDR networks/ranges, `client_name`, `helo`,
`sender_domain`, `recipient_domain` against domains (`.example.com` also matches every name
below it; `subdomains: true` makes every entry do so), `sender` / `recipient` against addresses
(`@example.com` matches the whole domain). Invariants:
- lookups are O(log n) (CIDR) or O(labels) (domains, addresses): 100,000 entries cost the same
  as ten (bench/bench_limits.py measures it);
- a list whose fact is not known at the check's stage is a load-time error;
- a bad entry is a `ConfigError` naming `file:line`; no I/O after loading.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator

from smtpguard.checks.base import CheckBase, CheckContext, CheckEnv, CheckOptions, CheckResult
from smtpguard.facts import Transaction
from smtpguard.lists import (
    AddressSet,
    CidrSet,
    DomainSet,
    load_address_set,
    load_cidr_set,
    load_domain_set,
    resolve_list_path,
)
from smtpguard.ratelimits import NAME_RE

Matchable = Literal["client_ip", "client_name", "helo", "sender", "sender_domain", "recipient", "recipient_domain"]
DOMAIN_FACTS = frozenset({"client_name", "helo", "sender_domain", "recipient_domain"})
ADDRESS_FACTS = frozenset({"sender", "recipient"})


class ListSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    match: Matchable
    entries: tuple[str, ...] = ()
    files: tuple[Path, ...] = ()
    subdomains: bool = False  # domain lists: every entry also matches the names below it

    @field_validator("files")
    @classmethod
    def _relative_to_policy(cls, value: tuple[Path, ...], info: ValidationInfo) -> tuple[Path, ...]:
        base = (info.context or {}).get("policy_dir")
        return tuple(resolve_list_path(p, base) for p in value)


class ACLOptions(CheckOptions):
    lists: dict[str, ListSpec]

    @model_validator(mode="after")
    def _names(self) -> Self:
        for name in self.lists:
            if not NAME_RE.match(name) or name == "error":
                raise ValueError(f"list name {name!r} must match {NAME_RE.pattern}")
        return self


def build_set(spec: ListSpec) -> CidrSet | DomainSet | AddressSet:
    if spec.match == "client_ip":
        return load_cidr_set(spec.entries, spec.files)
    if spec.match in DOMAIN_FACTS:
        return load_domain_set(spec.entries, spec.files, subdomains=spec.subdomains)
    return load_address_set(spec.entries, spec.files)


def _tx(ctx: CheckContext) -> Transaction | None:
    return ctx.transaction


_GETTERS: dict[str, Callable[[CheckContext], object]] = {
    "client_ip": lambda c: c.session.client_ip,
    "client_name": lambda c: c.session.client_name,
    "helo": lambda c: c.session.helo,
    "sender": lambda c: t.sender if (t := _tx(c)) is not None else None,
    "sender_domain": lambda c: t.sender_domain if (t := _tx(c)) is not None else None,
    "recipient": lambda c: t.recipient if (t := _tx(c)) is not None else None,
    "recipient_domain": lambda c: t.recipient_domain if (t := _tx(c)) is not None else None,
}


def fact_of(fact: str, ctx: CheckContext) -> object:
    return _GETTERS[fact](ctx)


class ACLCheckBase(CheckBase):
    """Subclasses set `name`, `stage`, `scope` and `FACTS` (what is known at that stage)."""

    FACTS: ClassVar[frozenset[str]]
    Options: ClassVar[type[CheckOptions]] = ACLOptions
    options: ACLOptions

    def __init__(self, options: CheckOptions, env: CheckEnv) -> None:
        super().__init__(options, env)
        for name, spec in self.options.lists.items():
            if spec.match not in self.FACTS:
                raise ValueError(f"{self.name}: list {name!r} matches {spec.match}, which is not known at the "
                                 f"{self.stage.value} stage (use one of: {', '.join(sorted(self.FACTS))})")
        self.sets = {name: (spec.match, build_set(spec)) for name, spec in self.options.lists.items()}
        self._probes = [(f"{self.name}.{name}.match", _GETTERS[fact], entries)
                        for name, (fact, entries) in self.sets.items()]

    def declared_outcomes(self) -> frozenset[str]:
        return frozenset({f"{self.name}.error"} | {f"{self.name}.{n}.match" for n in self.sets})

    async def run(self, ctx: CheckContext) -> CheckResult:
        return CheckResult(frozenset(outcome for outcome, get, entries in self._probes if get(ctx) in entries))
