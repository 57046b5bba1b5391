"""lists.py: CidrSet / DomainSet / AddressSet against naive reference implementations."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpguard.errors import ConfigError
from smtpguard.lists import (
    AddressSet,
    CidrSet,
    DomainSet,
    load_address_set,
    load_cidr_set,
    load_domain_set,
    parse_interval,
    parse_networks,
    read_list_file,
    resolve_list_path,
)

# small address spaces so that hits are frequent
v4_nets = st.builds(lambda a, p: ipaddress.ip_network(f"{ipaddress.IPv4Address(a)}/{p}", strict=False),
                    st.integers(0xC0000000, 0xC00003FF), st.integers(22, 32))
v6_nets = st.builds(lambda a, p: ipaddress.ip_network(f"{ipaddress.IPv6Address(a)}/{p}", strict=False),
                    st.integers(0x20010DB8 << 96, (0x20010DB8 << 96) + 0xFFFF), st.integers(112, 128))
v4_addrs = st.builds(ipaddress.IPv4Address, st.integers(0xC0000000 - 16, 0xC0000400 + 16))
v6_addrs = st.builds(ipaddress.IPv6Address, st.integers((0x20010DB8 << 96) - 16, (0x20010DB8 << 96) + 0x10010))


@given(nets=st.lists(st.one_of(v4_nets, v6_nets), max_size=30), probes=st.lists(st.one_of(v4_addrs, v6_addrs),
                                                                                  max_size=30))
def test_cidr_set_matches_naive_membership(nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
                                           probes: list[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> None:
    cidrs = CidrSet(nets)
    for probe in probes:
        expected = any(probe.version == n.version and probe in n for n in nets)
        assert (probe in cidrs) is expected
        assert (str(probe) in cidrs) is expected


@given(nets=st.lists(v4_nets, max_size=20), probes=st.lists(v4_addrs, max_size=20))
def test_ipv4_mapped_ipv6_matches_ipv4_entries(nets: list[ipaddress.IPv4Network],
                                               probes: list[ipaddress.IPv4Address]) -> None:
    cidrs = CidrSet(nets)
    mapped_entries = CidrSet([f"::ffff:{n.network_address}/{96 + n.prefixlen}" for n in nets])
    for probe in probes:
        expected = any(probe in n for n in nets)
        assert (ipaddress.IPv6Address(f"::ffff:{probe}") in cidrs) is expected
        assert (probe in mapped_entries) is expected


@given(first=st.integers(0, 2**32 - 1), span=st.integers(0, 5000), probe=st.integers(0, 2**32 - 1))
@settings(max_examples=200)
def test_ranges_are_inclusive(first: int, span: int, probe: int) -> None:
    last = min(first + span, 2**32 - 1)
    cidrs = CidrSet([f"{ipaddress.IPv4Address(first)}-{ipaddress.IPv4Address(last)}"])
    assert (ipaddress.IPv4Address(probe) in cidrs) is (first <= probe <= last)


def test_cidr_set_rejects_garbage_and_host_bits() -> None:
    assert "not an ip" not in CidrSet(["192.0.2.0/24"])
    assert 42 not in CidrSet(["192.0.2.0/24"])
    for bad in ["192.0.2.1/24", "300.1.1.1", "192.0.2.9-192.0.2.1", "192.0.2.1-2001:db8::1"]:
        with pytest.raises(ValueError):
            parse_networks(bad)


labels = st.sampled_from(["a", "b", "ex", "mail", "co", "uk", "test"])
domains = st.lists(labels, min_size=1, max_size=4).map(".".join)


def naive_domain_match(entries: list[str], subdomains: bool, name: str) -> bool:
    name = name.lower().rstrip(".")
    for entry in entries:
        e = entry.lower().rstrip(".")
        tree = subdomains or e.startswith(".") or e.startswith("*.")
        e = e.lstrip("*").lstrip(".")
        if name == e or (tree and name.endswith("." + e)):
            return True
    return False


@given(entries=st.lists(st.tuples(domains, st.sampled_from(["", ".", "*."])).map(lambda t: t[1] + t[0]),
                        max_size=15),
       probes=st.lists(domains.map(lambda d: d.upper() if len(d) % 2 else d + "."), max_size=20),
       subdomains=st.booleans())
def test_domain_set_matches_naive(entries: list[str], probes: list[str], subdomains: bool) -> None:
    domain_set = DomainSet(entries, subdomains=subdomains)
    for probe in probes:
        assert (probe in domain_set) is naive_domain_match(entries, subdomains, probe)


def test_domain_set_edge_cases() -> None:
    d = DomainSet(["example.com", ".corp.test"])
    assert "EXAMPLE.com." in d
    assert "mx.example.com" not in d
    assert "corp.test" in d and "a.b.corp.test" in d
    assert "" not in d and None not in d and "xcorp.test" not in d


def test_address_set() -> None:
    a = AddressSet(["Alice@Example.COM", "@spam.test", "<bob@ex.test>"])
    assert "Alice@example.com" in a
    assert "alice@example.com" not in a  # local parts are case-sensitive
    assert "anyone@SPAM.test" in a
    assert "bob@ex.test" in a
    assert "nobody" not in a and None not in a


def test_list_files_report_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "nets.txt"
    f.write_text("# comment\n192.0.2.0/24  # inline comment\n\n10.0.0.1/8\n198.51.100.7\n")
    assert read_list_file(f) == [(2, "192.0.2.0/24"), (4, "10.0.0.1/8"), (5, "198.51.100.7")]
    with pytest.raises(ConfigError) as exc:
        load_cidr_set(["203.0.113.0/24"], [f])
    assert f"{f}:4:" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load_cidr_set([], [tmp_path / "missing.txt"])
    assert "cannot read list file" in str(exc.value)


def test_loaders_combine_inline_and_files(tmp_path: Path) -> None:
    f = tmp_path / "domains.txt"
    f.write_text("example.org\n")
    d = load_domain_set(["example.com"], [f], subdomains=True)
    assert "mx.example.org" in d and "example.com" in d
    with pytest.raises(ConfigError):
        load_domain_set(["bad domain"])
    a = load_address_set(["@example.com", "x@example.org"])
    assert "y@example.com" in a
    with pytest.raises(ConfigError):
        load_address_set(["not-an-address"])
    c = load_cidr_set(["127.0.0.2-127.0.0.11"])
    assert "127.0.0.11" in c and "127.0.0.12" not in c


def test_relative_paths_resolve_against_policy_dir(tmp_path: Path) -> None:
    assert resolve_list_path(Path("lists/a.txt"), tmp_path) == tmp_path / "lists/a.txt"
    assert resolve_list_path(Path("/abs.txt"), tmp_path) == Path("/abs.txt")
    assert resolve_list_path(Path("a.txt"), None) == Path("a.txt")


def test_hundred_thousand_entries() -> None:
    nets = [f"10.{i >> 8 & 255}.{i & 255}.0/24" for i in range(65536)] + [
        f"2001:db8:{i:x}::/48" for i in range(34464)]
    cidrs = CidrSet(nets)
    assert len(cidrs) == 100_000
    assert "10.200.3.77" in cidrs and "11.0.0.1" not in cidrs
    assert "2001:db8:1f::1" in cidrs and "2001:db9::1" not in cidrs


@given(value=st.one_of(st.integers(0, 2**32 - 1).map(lambda v: str(ipaddress.IPv4Address(v))),
                       st.integers(0, 2**128 - 1).map(lambda v: str(ipaddress.IPv6Address(v)))),
       prefix=st.integers(0, 130))
def test_parse_interval_agrees_with_ipaddress(value: str, prefix: int) -> None:
    text = f"{value}/{prefix}"
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError:
        with pytest.raises(ValueError):
            parse_interval(text)
        return
    assert parse_interval(text) == (net.version, int(net.network_address), int(net.broadcast_address))


def test_parse_interval_rejects_what_ipaddress_rejects() -> None:
    for bad in ("192.0.2.0/", "192.0.2.0/+8", "192.0.2.0/08", "1.2.3", "01.2.3.4", "fe80::1%eth0", " /24", ""):
        with pytest.raises(ValueError):
            parse_interval(bad)
