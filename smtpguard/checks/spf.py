"""`spf`: RFC 7208 check of the MAIL FROM identity (or HELO for the null sender) with pyspf.

Invariants:
- pyspf is blocking; it only ever runs in a worker thread (the resolver's pool when the resolver
  offers one, else a pool owned by this check), never on the event loop.
- pyspf reaches DNS only through `_Query.dns` (a subclass override), which asks our resolver:
  no module global is patched, so concurrent checks with different resolvers are independent.
  A `DNSError` becomes `temperror`; RFC 7208 limits (10 lookups, 2 void lookups, 10 MX/PTR,
  CNAME chain) are pyspf's, in strict mode.
- The identity's domain is validated before any lookup: no domain, a domain literal or a
  malformed / single-label name gives `none` (RFC 7208 §4.3) without touching DNS.
- `explanation` comes from the sender's DNS (`exp=`): it is sanitised (printable ASCII, no `;`,
  bounded length) and only ever appears in details, never in a reply.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dns.name
import dns.reversename
import spf as pyspf

from smtpguard.checks.base import CheckBase, CheckContext, CheckEnv, CheckOptions, CheckResult
from smtpguard.errors import DNSError
from smtpguard.stage import Scope, Stage

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_UNSAFE = re.compile(r"[^\x20-\x7e]|;")
_CONTROL = re.compile(r"[^\x20-\x7e]")
_QUERYTIME = 20.0  # RFC 7208 §4.6.4: at least 20 s for the whole evaluation


class Options(CheckOptions):
    received_spf: bool = False  # also put a Received-SPF header value in details["received_spf"]
    threads: int = 16  # size of the own pool, only used when the resolver has none


def sanitize(text: str, limit: int = 200) -> str:
    """Printable ASCII without `;`, at most `limit` characters."""
    return _UNSAFE.sub("?", text)[:limit].strip()


def spf_domain(identity: str) -> str | None:
    """The domain to evaluate, or None when RFC 7208 §4.3 says the result is `none`.

    `identity` is a MAIL FROM address or a HELO name. A trailing dot is ignored; the name must
    have at least two labels, each 1..63 chars of letters, digits, `-` or `_` (no literal).
    """
    domain = identity.rpartition("@")[2].strip().rstrip(".")
    if not domain or domain.startswith("[") or len(domain) > 253:
        return None
    labels = domain.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        return None
    return domain.lower()


Lookup = Callable[[str, str], list[Any]]


class _Query(pyspf.query):  # type: ignore[misc]
    """pyspf query whose DNS goes through `lookup(name, qtype)` (values in pyspf's format)."""

    def __init__(self, lookup: Lookup, **kw: Any) -> None:
        super().__init__(**kw)
        self._lookup = lookup
        self._deadline = time.monotonic() + _QUERYTIME

    def dns(self, name: str, qtype: str, cnames: dict[str, str] | None = None,
            ignore_void: bool = False) -> list[Any]:
        # pyspf.query.dns (2.0.14) with the module-global DNSLookup replaced by self._lookup;
        # CNAMEs are followed by our resolver, so the CNAME branch of the original is not needed.
        if not name:
            raise pyspf.PermError("Invalid query")
        name = str(name).rstrip(".")
        if not all(0 < len(label) < 64 for label in name.split(".")):
            return []  # invalid DNS name (too long or empty label)
        name = name.lower()
        key = (name, qtype)
        result: list[Any] | None = self.cache.get(key)
        if result is None:
            if time.monotonic() > self._deadline:
                raise pyspf.TempError("DNS Error: exceeded max query lookup time")
            result = self._lookup(name, qtype)
            self.cache[key] = result
        if not result and not ignore_void:
            self.void_lookups += 1
            if self.void_lookups > pyspf.MAX_VOID_LOOKUPS:
                raise pyspf.PermError(f"Void lookup limit of {pyspf.MAX_VOID_LOOKUPS} exceeded")
        return result


def pyspf_lookup(a: Callable[[str], list[str]], aaaa: Callable[[str], list[str]],
                 txt: Callable[[str], list[bytes]], mx: Callable[[str], list[tuple[int, str]]],
                 ptr: Callable[[str], list[str]]) -> Lookup:
    """Adapt Resolver-shaped blocking lookups to pyspf's value format (DNSError -> TempError)."""

    def lookup(name: str, qtype: str) -> list[Any]:
        try:
            if qtype == "A":
                return a(name)
            if qtype == "AAAA":
                return aaaa(name)
            if qtype in ("TXT", "SPF"):
                return [[t] for t in txt(name)] if qtype == "TXT" else []
            if qtype == "MX":
                return mx(name)
            if qtype == "PTR":
                try:
                    address = dns.reversename.to_address(dns.name.from_text(name))
                except (dns.exception.DNSException, ValueError):
                    return []
                return ptr(address)
        except DNSError as exc:
            raise pyspf.TempError(f"DNS {exc}") from None
        return []

    return lookup


@dataclass(frozen=True, slots=True)
class SpfResult:
    result: str
    explanation: str
    domain: str
    identity: str  # "mailfrom" | "helo"
    received_spf: str = ""


def evaluate_spf(lookup: Lookup, ip: str, sender: str, helo: str, receiver: str,
                 received_spf: bool = False, default_explanation: str | None = None) -> SpfResult:
    """Blocking: run pyspf for one identity. `sender` "" means the null sender (HELO identity)."""
    identity = "mailfrom" if sender else "helo"
    domain = spf_domain(sender if sender else helo)
    if domain is None:
        return SpfResult("none", "", "", identity)
    q = _Query(lookup, i=ip, s=sender, h=helo, receiver=receiver, strict=True, querytime=_QUERYTIME)
    if default_explanation is not None:
        q.set_default_explanation(default_explanation)
    try:
        result, _code, explanation = q.check()
    except pyspf.TempError as exc:  # pyspf normally catches these itself
        result, explanation = "temperror", str(exc)
    result = {"unknown": "permerror", "error": "temperror"}.get(result, result)
    if result not in RESULTS:
        result = "permerror"
    header = ""
    if received_spf:
        # pyspf quotes every attacker-controlled value (quote_value), so `;` stays a separator;
        # only control characters are removed here
        header = _CONTROL.sub("?", q.get_header(result, receiver=receiver))[:1000]
        header = header.removeprefix("Received-SPF:").strip()
    return SpfResult(result, sanitize(str(explanation)), domain, identity, header)


class SpfCheck(CheckBase):
    name = "spf"
    stage = Stage.MAIL
    scope = Scope.TRANSACTION
    Options = Options
    OUTCOMES = RESULTS

    def __init__(self, options: CheckOptions, env: CheckEnv) -> None:
        super().__init__(options, env)
        self._own_pool: ThreadPoolExecutor | None = None

    async def run(self, ctx: CheckContext) -> CheckResult:
        assert isinstance(self.options, Options)
        tx = ctx.transaction
        sender = (tx.sender if tx is not None else None) or ""
        if sender == "<>":  # defensive: the null sender is "" in Transaction, as pyspf wants it
            sender = ""
        helo = ctx.session.helo or ""
        ip = ctx.session.client_ip
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        args = (str(ip), sender, helo, ctx.env.hostname, self.options.received_spf)
        resolver = ctx.env.dns
        if hasattr(resolver, "sync") and hasattr(resolver, "run_blocking"):
            s = resolver.sync
            lookup = pyspf_lookup(s.lookup_a, s.lookup_aaaa, s.lookup_txt, s.lookup_mx, s.lookup_ptr)
            res: SpfResult = await resolver.run_blocking(evaluate_spf, lookup, *args)
        else:
            loop = asyncio.get_running_loop()
            lookup = _bridged_lookup(resolver, loop)
            if self._own_pool is None:
                self._own_pool = ThreadPoolExecutor(self.options.threads, thread_name_prefix="smtpguard-spf")
            res = await loop.run_in_executor(self._own_pool, lambda: evaluate_spf(lookup, *args))
        details = {"result": res.result, "explanation": res.explanation, "domain": res.domain,
                   "identity": res.identity}
        if self.options.received_spf:
            details["received_spf"] = res.received_spf
        return CheckResult(frozenset({self.outcome(res.result)}), details)

    async def close(self) -> None:
        if self._own_pool is not None:
            self._own_pool.shutdown(wait=False, cancel_futures=True)
            self._own_pool = None


def _bridged_lookup(resolver: Any, loop: asyncio.AbstractEventLoop) -> Lookup:
    """Blocking lookups that run the async Resolver's coroutines on `loop` (from a worker thread)."""

    def call(method: str) -> Callable[[str], Any]:
        def blocking(arg: str) -> Any:
            return asyncio.run_coroutine_threadsafe(getattr(resolver, method)(arg), loop).result()

        return blocking

    return pyspf_lookup(call("lookup_a"), call("lookup_aaaa"), call("lookup_txt"), call("lookup_mx"),
                        call("lookup_ptr"))


CHECK = SpfCheck
