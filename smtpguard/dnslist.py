"""The DNS-list engine behind the `dnsbl`, `dnswl` and `rhsbl` checks (RFC 5782 lists).

Invariants (tests/unit/test_check_dnsbl.py, tests/integration/test_dnsbl_nsd.py):
- an answer is a listing only when it falls in the zone's `listed_codes`; an answer in
  `error_codes` (Spamhaus 127.255.255.x: "open resolver", "over quota") makes the zone's status
  `error`, never `listed`; any other answer is ignored;
- a zone's score is the sum of the weights of its listed codes (first `weights` entry matching a
  code, else the zone's `weight`);
- every zone is queried concurrently; a DNS failure is that zone's `error`, never an exception;
- the DQS-style `query_key` is only ever part of a query name: it is a `SecretStr` in the
  options, never in a detail, template field, log line, metric or exception text (exceptions
  from the resolver are logged by class name only, TXT reasons have it cut out);
- a zone whose health probe (RFC 5782 section 5 test points) fails -- the "always listed" point
  is not listed, or the "never listed" point is -- is unhealthy: DNSBL_ZONE_HEALTHY=0 and its
  status is `error` until a later probe succeeds. A probe that cannot reach DNS changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from smtpguard import metrics
from smtpguard.checks.base import CheckOptions, CheckResult
from smtpguard.errors import DNSError
from smtpguard.facts import IPAddress
from smtpguard.lists import CidrSet, parse_domain, parse_networks

log = logging.getLogger("smtpguard.dnslist")

ZONE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
RESERVED_NAMES = frozenset({"listed", "not_listed", "error", "sender", "helo", "rdns"})
Status = Literal["listed", "not_listed", "error"]
_MAX_REASON = 200


class ZoneOptions(BaseModel):
    """One DNS list. Durations are seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    zone: str
    listed_codes: tuple[str, ...] = ("127.0.0.2-127.0.255.255",)
    error_codes: tuple[str, ...] = ("127.255.255.0/24",)
    weights: dict[str, float] = Field(default_factory=dict)  # code, range or CIDR -> weight
    weight: float | None = None  # weight of a listed code not in `weights` (check default if None)
    txt_reason: bool = True  # fetch the TXT reason of a listing (for logs / decision records)
    txt_reason_in_reply: bool = False  # may the TXT reason reach a reply template?
    query_key: SecretStr | None = None  # DQS-style key: queries go to <name>.<key>.<zone>
    probe_interval: float | None = Field(default=300.0, ge=0)  # 0 / null: no health probes

    @field_validator("zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return parse_domain(value).lstrip(".")

    @field_validator("listed_codes", "error_codes")
    @classmethod
    def _codes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for code in value:
            parse_networks(code)
        return value

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: dict[str, float]) -> dict[str, float]:
        for code in value:
            parse_networks(code)
        return value



def validate_zone_names(check: str, names: Sequence[str]) -> None:
    for name in names:
        if not ZONE_NAME_RE.match(name) or name in RESERVED_NAMES:
            raise ValueError(f"{check}: zone name {name!r} must match {ZONE_NAME_RE.pattern} "
                             f"and not be one of {', '.join(sorted(RESERVED_NAMES))}")


class ZoneListOptions(CheckOptions):
    """Options shared by every DNS-list check: named zones, checked for usable names."""

    zones: dict[str, ZoneOptions]

    @model_validator(mode="after")
    def _valid(self) -> Self:
        validate_zone_names("zones", list(self.zones))
        return self


@dataclass(frozen=True, slots=True)
class ZoneAnswer:
    name: str  # the zone's configured name (never its query suffix)
    status: Status
    codes: tuple[str, ...] = ()
    score: float = 0.0
    reason: str | None = None  # sanitised TXT reason
    reason_in_reply: bool = False
    why: str = ""  # for errors: dns_error, error_code, unhealthy


@dataclass(slots=True)
class _Zone:
    name: str
    options: ZoneOptions
    suffix: str = field(repr=False)  # "<key>.<zone>" or "<zone>" -- secret when keyed
    listed: CidrSet
    errors: CidrSet
    weights: list[tuple[CidrSet, float]]
    weight: float
    healthy: bool = True
    probe_failed: bool = False
    secret: str | None = field(default=None, repr=False)


def reverse_name(address: IPAddress) -> str:
    """`192.0.2.1` -> `1.2.0.192`; IPv6 -> 32 nibbles, least significant first (RFC 5782)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.version == 4:
        return ".".join(reversed(str(address).split(".")))
    return ".".join(reversed(address.exploded.replace(":", "")))


def sanitize_reason(raw: Sequence[bytes], secret: str | None) -> str:
    text = " ".join(item.decode("ascii", "replace") for item in raw)
    text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    if secret:
        text = re.sub(re.escape(secret), "[key]", text, flags=re.IGNORECASE)
    return text[:_MAX_REASON]


class DNSList:
    """A set of configured zones of one kind (`address`: IP lists; `domain`: RHSBL)."""

    def __init__(self, check: str, zones: Mapping[str, ZoneOptions], *, default_weight: float,
                 kind: Literal["address", "domain"]) -> None:
        self.check = check
        self.kind = kind
        self._zones: dict[str, _Zone] = {}
        for name, opts in zones.items():
            secret = opts.query_key.get_secret_value() if opts.query_key is not None else None
            if secret is not None and not re.fullmatch(r"[A-Za-z0-9-]{1,63}", secret):
                # checked here, not in the model: pydantic errors echo the input value
                raise ValueError(f"zone {name}: query_key must be one DNS label (letters, digits, hyphens)")
            self._zones[name] = _Zone(
                name=name, options=opts, suffix=f"{secret}.{opts.zone}" if secret else opts.zone,
                listed=CidrSet(opts.listed_codes), errors=CidrSet(opts.error_codes),
                weights=[(CidrSet([code]), w) for code, w in opts.weights.items()],
                weight=opts.weight if opts.weight is not None else default_weight, secret=secret)
            metrics.DNSBL_ZONE_HEALTHY.labels(self._label(name)).set(1)
        self._tasks: list[asyncio.Task[None]] = []
        self._last_failure_log: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def _label(self, name: str) -> str:
        return f"{self.check}/{name}"

    @property
    def names(self) -> list[str]:
        return list(self._zones)

    def healthy(self, name: str) -> bool:
        return self._zones[name].healthy

    # -- queries -------------------------------------------------------------------------------

    async def query_address(self, resolver: Any, address: IPAddress) -> list[ZoneAnswer]:
        prefix = reverse_name(address)
        return list(await asyncio.gather(*(self._query(resolver, z, prefix) for z in self._zones.values())))

    async def query_domain(self, resolver: Any, domain: str) -> list[ZoneAnswer]:
        return list(await asyncio.gather(*(self._query(resolver, z, domain) for z in self._zones.values())))

    async def _query(self, resolver: Any, zone: _Zone, prefix: str) -> ZoneAnswer:
        if not zone.healthy:
            return ZoneAnswer(zone.name, "error", why="unhealthy")
        qname = f"{prefix}.{zone.suffix}"
        if len(qname) > 253:
            return ZoneAnswer(zone.name, "not_listed", why="name_too_long")
        try:
            answers = await resolver.lookup_a(qname)
        except Exception as exc:  # DNSError, or anything else: never let a query name out
            self._log_failure(zone, exc)
            return ZoneAnswer(zone.name, "error", why="dns_error")
        return await self._classify(resolver, zone, qname, answers)

    async def _classify(self, resolver: Any, zone: _Zone, qname: str, answers: list[str]) -> ZoneAnswer:
        listed: list[str] = []
        errored = False
        for answer in answers:
            if answer in zone.errors:
                errored = True
            elif answer in zone.listed:
                listed.append(answer)
        if errored and not listed:
            log.warning("%s: zone %s answered an error code (%s); not a listing", self.check, zone.name,
                        ",".join(a for a in answers if a in zone.errors))
            return ZoneAnswer(zone.name, "error", why="error_code")
        if not listed:
            return ZoneAnswer(zone.name, "not_listed")
        score = sum(self._weight(zone, code) for code in listed)
        reason = None
        if zone.options.txt_reason or zone.options.txt_reason_in_reply:
            try:
                reason = sanitize_reason(await resolver.lookup_txt(qname), zone.secret) or None
            except Exception as exc:
                self._log_failure(zone, exc, what="TXT")
        return ZoneAnswer(zone.name, "listed", tuple(sorted(listed)), score, reason,
                          zone.options.txt_reason_in_reply)

    def _weight(self, zone: _Zone, code: str) -> float:
        for codes, weight in zone.weights:
            if code in codes:
                return weight
        return zone.weight

    def _log_failure(self, zone: _Zone, exc: BaseException, what: str = "A") -> None:
        # at most one line per zone and minute: a DNS outage must not flood the log (the
        # outcome `<check>.error` and the DNS metrics count every failure)
        now = time.monotonic()
        last = self._last_failure_log.get(zone.name)
        if last is not None and now - last < 60.0:
            self._suppressed[zone.name] = self._suppressed.get(zone.name, 0) + 1
            return
        self._last_failure_log[zone.name] = now
        kind = "DNS failure" if isinstance(exc, DNSError | TimeoutError) else "unexpected error"
        more = self._suppressed.pop(zone.name, 0)
        log.warning("%s: zone %s %s lookup: %s (%s)%s", self.check, zone.name, what, kind, type(exc).__name__,
                    f"; {more} more failures in the last minute" if more else "")

    # -- health probes -------------------------------------------------------------------------

    def _test_points(self) -> tuple[str, str]:
        if self.kind == "address":
            return "2.0.0.127", "1.0.0.127"
        return "test", "invalid"

    async def probe(self, resolver: Any, name: str) -> bool | None:
        """Probe one zone now; returns its new health, or None when DNS could not be asked."""
        zone = self._zones[name]
        must, must_not = self._test_points()
        try:
            positive, negative = await asyncio.gather(resolver.lookup_a(f"{must}.{zone.suffix}"),
                                                      resolver.lookup_a(f"{must_not}.{zone.suffix}"))
        except Exception as exc:
            self._log_failure(zone, exc, what="probe")
            return None
        ok = any(a in zone.listed for a in positive) and not any(a in zone.listed for a in negative)
        self._set_health(zone, ok, positive, negative)
        return ok

    def _set_health(self, zone: _Zone, ok: bool, positive: list[str], negative: list[str]) -> None:
        if ok == zone.healthy:
            return
        zone.healthy = ok
        metrics.DNSBL_ZONE_HEALTHY.labels(self._label(zone.name)).set(1 if ok else 0)
        if ok:
            log.info("%s: zone %s healthy again", self.check, zone.name)
        else:
            why = "test point not listed" if not any(a in zone.listed for a in positive) else "lists everything"
            log.warning("%s: zone %s unhealthy (%s); its outcome is error until a probe passes",
                        self.check, zone.name, why)

    async def start(self, resolver: Any) -> None:
        """Start one probe loop per zone with a probe interval (first probe at once)."""
        for name, zone in self._zones.items():
            interval = zone.options.probe_interval
            if interval:
                self._tasks.append(asyncio.create_task(self._probe_loop(resolver, name, interval),
                                                       name=f"{self.check}-probe-{name}"))

    async def _probe_loop(self, resolver: Any, name: str, interval: float) -> None:
        while True:
            await self.probe(resolver, name)
            await asyncio.sleep(interval)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()


def summarize(check: str, answers: Sequence[ZoneAnswer], reason_field: str) -> CheckResult:
    """Turn zone answers into outcomes (`<check>.listed`, `<check>.<zone>.listed`, ...).

    Template fields (for `{dnsbl.zone}`, `{dnsbl.reason}` in reply templates): `zone` is the
    configured *name* of the first listing zone (never its DNS name: DQS hosts stay private);
    `reason` and `<reason_field>` carry its TXT reason, only from zones that allow it.
    """
    outcomes: set[str] = set()
    details: dict[str, str] = {}
    templates: dict[str, str] = {}
    score = 0.0
    for a in answers:
        if a.status == "listed":
            outcomes |= {f"{check}.listed", f"{check}.{a.name}.listed"}
            score += a.score
            details[a.name] = "listed " + ",".join(a.codes)
            templates.setdefault("zone", a.name)
            if a.reason:
                details[f"{a.name}_reason"] = a.reason
                if a.reason_in_reply and reason_field not in templates:
                    templates[reason_field] = templates["reason"] = a.reason
        elif a.status == "error":
            outcomes |= {f"{check}.error", f"{check}.{a.name}.error"}
            details[a.name] = f"error {a.why}"
    if not outcomes:
        outcomes.add(f"{check}.not_listed")
    return CheckResult(frozenset(outcomes), details, score, templates)


def zone_outcomes(check: str, names: Sequence[str]) -> frozenset[str]:
    out = {f"{check}.listed", f"{check}.not_listed", f"{check}.error"}
    for name in names:
        out |= {f"{check}.{name}.listed", f"{check}.{name}.error"}
    return frozenset(out)
