"""The openspf RFC 7208 test suite (tests/data/rfc7208-tests.yml, from pyspf 2.0.14's sdist) run
through our `spf` check with a fake resolver built from each scenario's zonedata.

Zonedata semantics follow pyspf's own driver (test/testspf.py): a bare `TIMEOUT` entry makes every
query for that name a DNSError, `{TYPE: TIMEOUT}` only that type; SPF-type records stand in for
TXT when a name has no TXT; a TXT value of NONE means no record; unknown names under `error.`
time out. Expected results may be a list (any is acceptable).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml
from auth_fakes import FakeBlockingResolver, make_ctx

from smtpguard.checks.base import CheckEnv
from smtpguard.checks.spf import CHECK, Options
from smtpguard.errors import DNSError

SUITE = Path(__file__).parents[1] / "data" / "rfc7208-tests.yml"


class SuiteResolver(FakeBlockingResolver):
    # name -> record types listed BEFORE its bare TIMEOUT entry (those still answer, as in testspf)
    bare_timeouts: dict[str, set[str]]

    def get(self, name: str, rtype: str, depth: int = 0) -> list[Any]:
        n = name.rstrip(".").lower()
        if n in self.bare_timeouts and rtype not in self.bare_timeouts[n]:
            raise DNSError("timeout")
        if n.startswith("error.") and not any(k[0] == n for k in self.records):
            raise DNSError("timeout")
        return super().get(name, rtype, depth)


def load_cases() -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    cases = []
    with SUITE.open("rb") as f:
        for scenario in yaml.safe_load_all(f):
            for test_id, test in scenario["tests"].items():
                cases.append((scenario["description"], test_id, scenario["zonedata"], test))
    return cases


def build_resolver(zonedata: dict[str, list[Any]]) -> SuiteResolver:
    r = SuiteResolver()
    r.bare_timeouts = {}
    for name, rrs in zonedata.items():
        has_txt = any(isinstance(rr, dict) and "TXT" in rr for rr in rrs)
        seen: set[str] = set()
        for rr in rrs:
            if rr == "TIMEOUT":
                r.bare_timeouts[name.lower()] = set(seen)
                continue
            seen.update(t for t, v in rr.items() if v not in ("NONE", ["NONE"]))
            if "SPF" in rr and not has_txt:
                seen.add("TXT")
            for rtype, value in rr.items():
                if value == "TIMEOUT":
                    r.timeouts.add((name.lower(), rtype))
                    continue
                if rtype == "SPF":
                    if has_txt or value == "NONE" or value == ["NONE"]:
                        continue
                    rtype = "TXT"
                if rtype == "TXT":
                    if value == "NONE" or value == ["NONE"]:
                        continue
                    value = "".join(value) if isinstance(value, list) else value
                    value = value.encode("utf-8")
                elif rtype == "AAAA":
                    value = str(ipaddress.ip_address(value))
                r.add(name, rtype, value)
    return r


CASES = load_cases()
RESULTS: dict[str, tuple[bool, str]] = {}


@pytest.mark.parametrize(("scenario", "test_id", "zonedata", "test"), CASES, ids=[c[1] for c in CASES])
async def test_rfc7208_case(scenario: str, test_id: str, zonedata: dict[str, Any], test: dict[str, Any]) -> None:
    resolver = build_resolver(zonedata)
    ctx = make_ctx(resolver, ip=test["host"], helo=test.get("helo"), sender=test.get("mailfrom", ""))
    check = CHECK(Options(), CheckEnv(hostname="receiver.test", dns=resolver))
    result = await check.run(ctx)
    expected = test["result"] if isinstance(test["result"], list) else [test["result"]]
    got = result.details["result"]
    ok = got in expected
    why = f"{test_id} ({scenario}): expected {expected}, got {got} [{result.details['explanation']}]"
    if ok and "explanation" in test and got == "fail" and test["explanation"] != "DEFAULT":
        ok = result.details["explanation"] == test["explanation"]
        why = f"{test_id}: explanation {result.details['explanation']!r} != {test['explanation']!r}"
    RESULTS[test_id] = (ok, why)
    assert ok, why


def test_rfc7208_pass_rate(capsys: pytest.CaptureFixture[str]) -> None:
    """Runs after the cases (file order): prints the pass rate and every miss."""
    if len(RESULTS) != len(CASES):
        pytest.skip("run the whole module to get the pass rate")
    misses = [why for ok, why in RESULTS.values() if not ok]
    with capsys.disabled():
        print(f"\nRFC 7208 suite: {len(CASES) - len(misses)}/{len(CASES)} passed "
              f"({100 * (len(CASES) - len(misses)) / len(CASES):.1f} %)")
        for why in misses:
            print("  MISS", why)
    assert not misses
