"""The arc check: chains of one and two hops, tampering, DNS failure, trusted sealers."""

from __future__ import annotations

from auth_fakes import FakeResolver, arc_seal, make_ctx, make_message, rsa_key

from smtpguard.checks.arc import CHECK, Options
from smtpguard.checks.base import CheckEnv
from smtpguard.stage import Stage

LIST = "lists.example.org"
FWD = "fwd.example.net"


def resolver() -> FakeResolver:
    _, txt1 = rsa_key(1024)
    _, txt2 = rsa_key(1024, 1)
    return FakeResolver([(f"arc._domainkey.{LIST}", "TXT", txt1), (f"arc._domainkey.{FWD}", "TXT", txt2)])


def one_hop() -> bytes:
    return arc_seal(make_message(), LIST, "arc", rsa_key(1024)[0])


def two_hops() -> bytes:
    return arc_seal(one_hop(), FWD, "arc", rsa_key(1024, 1)[0], cv="pass")


async def run(raw: bytes, res: FakeResolver, **opts: object) -> tuple[frozenset[str], dict[str, str]]:
    check = CHECK(Options(**opts), CheckEnv(hostname="mx.guard.test", dns=res))  # type: ignore[arg-type]
    result = await check.run(make_ctx(res, raw=raw, stage=Stage.DATA))
    assert result.outcomes <= check.declared_outcomes()
    return result.outcomes, dict(result.details)


async def test_unsigned_is_none() -> None:
    assert (await run(make_message(), resolver()))[0] == {"arc.none"}


async def test_one_hop_passes() -> None:
    outcomes, details = await run(one_hop(), resolver())
    assert outcomes == {"arc.pass"}
    assert details["sealer"] == LIST
    assert details["instances"] == "1"


async def test_two_hops_pass_and_last_sealer_is_reported() -> None:
    outcomes, details = await run(two_hops(), resolver())
    assert outcomes == {"arc.pass"}
    assert details["sealer"] == FWD
    assert details["instances"] == "2"


async def test_trusted_pass_only_for_trusted_last_sealer() -> None:
    outcomes, _ = await run(two_hops(), resolver(), trusted_sealers=[FWD.upper()])
    assert outcomes == {"arc.pass", "arc.trusted_pass"}
    outcomes, _ = await run(two_hops(), resolver(), trusted_sealers=[LIST])  # not the last hop
    assert outcomes == {"arc.pass"}


async def test_tampered_body_fails() -> None:
    raw = two_hops().replace(b"Hello.", b"Hellp.")
    outcomes, _ = await run(raw, resolver(), trusted_sealers=[FWD])
    assert outcomes == {"arc.fail"}


async def test_key_timeout_is_temperror() -> None:
    res = resolver()
    res.timeouts.add((f"arc._domainkey.{FWD}", "TXT"))
    outcomes, _ = await run(two_hops(), res)
    assert outcomes == {"arc.temperror"}


async def test_missing_key_fails() -> None:
    outcomes, _ = await run(one_hop(), FakeResolver())
    assert outcomes == {"arc.fail"}


async def test_large_message_in_executor() -> None:
    outcomes, _ = await run(one_hop(), resolver(), executor_threshold=10)
    assert outcomes == {"arc.pass"}
