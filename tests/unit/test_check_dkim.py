"""The dkim check: every signature verified, RFC 8301 rules, l=, temperror vs permerror."""

from __future__ import annotations

import pytest
from auth_fakes import FakeResolver, ed25519_key, make_ctx, make_message, rsa_key, sign

from smtpguard.checks.base import CheckEnv
from smtpguard.checks.dkim import CHECK, Options, sanitize
from smtpguard.stage import Stage


def resolver_with(*keys: tuple[str, str]) -> FakeResolver:
    return FakeResolver([(name, "TXT", txt) for name, txt in keys])


async def run(raw: bytes, resolver: FakeResolver, **opts: object) -> tuple[frozenset[str], dict[str, str]]:
    check = CHECK(Options(**opts), CheckEnv(hostname="mx.guard.test", dns=resolver))  # type: ignore[arg-type]
    result = await check.run(make_ctx(resolver, raw=raw, stage=Stage.DATA))
    assert result.outcomes <= check.declared_outcomes()
    return result.outcomes, dict(result.details)


RSA_NAME = "sel._domainkey.example.com"
ED_NAME = "ed._domainkey.example.com"


async def test_no_signature_is_none() -> None:
    outcomes, details = await run(make_message(), FakeResolver())
    assert outcomes == {"dkim.none"}
    assert details["result"] == "none"


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
async def test_valid_signature_passes(kind: str) -> None:
    if kind == "rsa":
        key, txt = rsa_key(1024)
        raw = sign(make_message(), "example.com", "sel", key)
        resolver = resolver_with((RSA_NAME, txt))
    else:
        key, txt = ed25519_key()
        raw = sign(make_message(), "example.com", "ed", key, algorithm=b"ed25519-sha256")
        resolver = resolver_with((ED_NAME, txt))
    outcomes, details = await run(raw, resolver)
    assert outcomes == {"dkim.pass"}
    assert details["sig0.domain"] == "example.com"
    assert details["sig0.result"] == "pass"
    assert details["pass_domains"] == "example.com"


@pytest.mark.parametrize(("tamper", "what"), [
    (lambda raw: raw.replace(b"Subject: test", b"Subject: TEST"), "header"),
    (lambda raw: raw.replace(b"Hello.", b"Hellp."), "body"),
])
async def test_tampered_message_fails(tamper: object, what: str) -> None:
    key, txt = rsa_key(1024)
    raw = sign(make_message(), "example.com", "sel", key)
    outcomes, _details = await run(tamper(raw), resolver_with((RSA_NAME, txt)))  # type: ignore[operator]
    assert outcomes == {"dkim.fail"}, what


async def test_two_signatures_one_passes_one_fails() -> None:
    key, txt = rsa_key(1024)
    ed, _ed_txt = ed25519_key()
    raw = sign(make_message(), "example.com", "sel", key)
    raw = sign(raw, "other.example", "ed", ed, algorithm=b"ed25519-sha256")
    # the other.example key published is a different ed25519 key -> that signature fails
    _, wrong_txt = ed25519_key(1)
    resolver = resolver_with((RSA_NAME, txt), ("ed._domainkey.other.example", wrong_txt))
    outcomes, details = await run(raw, resolver)
    assert outcomes == {"dkim.pass", "dkim.fail"}
    assert details["signatures"] == "2"
    assert details["pass_domains"] == "example.com"
    assert details["result"] == "pass"
    assert {details["sig0.result"], details["sig1.result"]} == {"pass", "fail"}


async def test_dns_timeout_is_temperror_not_fail() -> None:
    key, _ = rsa_key(1024)
    raw = sign(make_message(), "example.com", "sel", key)
    outcomes, _details = await run(raw, FakeResolver(timeouts=[(RSA_NAME, "TXT")]))
    assert outcomes == {"dkim.temperror"}


async def test_missing_key_is_permerror() -> None:
    key, _ = rsa_key(1024)
    raw = sign(make_message(), "example.com", "sel", key)
    outcomes, details = await run(raw, FakeResolver())
    assert outcomes == {"dkim.permerror"}
    assert details["sig0.reason"] == "no key"


async def test_revoked_key_is_permerror() -> None:
    key, _ = rsa_key(1024)
    raw = sign(make_message(), "example.com", "sel", key)
    outcomes, _ = await run(raw, resolver_with((RSA_NAME, "v=DKIM1; k=rsa; p=")))
    assert outcomes == {"dkim.permerror"}


async def test_rsa_sha1_is_refused_by_default() -> None:
    key, txt = rsa_key(1024)
    raw = sign(make_message(), "example.com", "sel", key, algorithm=b"rsa-sha1")
    resolver = resolver_with((RSA_NAME, txt))
    outcomes, details = await run(raw, resolver)
    assert outcomes == {"dkim.permerror"}
    assert "RFC 8301" in details["sig0.reason"]
    assert resolver.queries == []  # no lookup for a signature refused on its algorithm
    outcomes, _ = await run(raw, resolver, allow_sha1=True)
    assert outcomes == {"dkim.pass"}


async def test_short_rsa_key_is_permerror() -> None:
    key, txt = rsa_key(512)
    raw = sign(make_message(), "example.com", "sel", key)
    outcomes, details = await run(raw, resolver_with((RSA_NAME, txt)))
    assert outcomes == {"dkim.permerror"}
    assert "too small" in details["sig0.reason"]
    outcomes, _ = await run(raw, resolver_with((RSA_NAME, txt)), min_key_bits=512)
    assert outcomes == {"dkim.pass"}


async def test_body_length_is_neutral_unless_allowed() -> None:
    key, txt = rsa_key(1024)
    raw = sign(make_message(), "example.com", "sel", key, length=True) + b"appended by someone else\r\n"
    outcomes, details = await run(raw, resolver_with((RSA_NAME, txt)))
    assert outcomes == {"dkim.neutral"}
    assert "l=" in details["sig0.reason"]
    outcomes, _ = await run(raw, resolver_with((RSA_NAME, txt)), allow_body_length=True)
    assert outcomes == {"dkim.pass"}


async def test_garbage_signature_is_permerror() -> None:
    raw = b"DKIM-Signature: v=1; a=rsa-sha256; this is not; valid\r\n" + make_message()
    outcomes, _ = await run(raw, FakeResolver())
    assert outcomes == {"dkim.permerror"}


async def test_large_message_verified_in_executor() -> None:
    key, txt = rsa_key(1024)
    raw = sign(make_message(body=b"x" * 998 + b"\r\n" * 1), "example.com", "sel", key)
    outcomes, _ = await run(raw, resolver_with((RSA_NAME, txt)), executor_threshold=100)
    assert outcomes == {"dkim.pass"}


async def test_keys_fetched_once_per_name() -> None:
    key, txt = rsa_key(1024)
    raw = sign(sign(make_message(), "example.com", "sel", key), "example.com", "sel", key)
    resolver = resolver_with((RSA_NAME, txt))
    outcomes, _ = await run(raw, resolver)
    assert outcomes == {"dkim.pass"}
    assert resolver.queries == [(RSA_NAME, "TXT")]


def test_sanitize_strips_separators() -> None:
    assert sanitize("a;b\r\nc\"d\\e") == "a?b c?d?e"
