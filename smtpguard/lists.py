"""Static lists: CIDR, domain and address sets, loaded from files or inline values.

Invariants (property-tested against naive reference implementations):
- `CidrSet.__contains__` is O(log n): networks are merged into sorted, disjoint integer
  intervals per address family; IPv4-mapped IPv6 addresses match IPv4 entries, and entries
  written as IPv4-mapped IPv6 networks are stored as IPv4. Entries may be a network
  (`192.0.2.0/24`), an address, or an inclusive range (`127.0.0.2-127.0.0.11`).
- `DomainSet` matches a domain and, for entries written `.example.com` or when
  `subdomains=True`, any name below it, in O(number of labels).
- `AddressSet` matches whole addresses case-insensitively on the domain and exactly on the
  local part; an entry `@example.com` matches every address at that domain.
- List files: one entry per line, `#` starts a comment, blank lines ignored; a bad entry is a
  `ConfigError` naming `file:line` (`load_cidr_set` / `load_domain_set` / `load_address_set`
  build a set from inline entries plus files).
"""

from __future__ import annotations

import bisect
import ipaddress
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from smtpguard.errors import ConfigError, Problem

T = TypeVar("T")


def read_list_file(path: Path) -> list[tuple[int, str]]:
    """(line number, entry) for every non-comment line of a list file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(Problem(str(path), None, f"cannot read list file: {exc.strerror}")) from None
    except UnicodeDecodeError:
        raise ConfigError(Problem(str(path), None, "list file is not valid UTF-8")) from None
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if entry:
            entries.append((number, entry))
    return entries


class CidrSet:
    __slots__ = ("_v4", "_v6", "size")

    def __init__(self, networks: Iterable[str | ipaddress.IPv4Network | ipaddress.IPv6Network] = ()) -> None:
        intervals: list[tuple[int, int, int]] = []
        self.size = 0
        for item in networks:
            self.size += 1
            if isinstance(item, str):
                intervals.append(parse_interval(item))
            else:
                intervals.append((item.version, int(item.network_address), int(item.broadcast_address)))
        self._v4, self._v6 = _build(intervals)

    @classmethod
    def from_intervals(cls, intervals: list[tuple[int, int, int]]) -> CidrSet:
        """From `(version, first, last)` triples as returned by `parse_interval`."""
        self = cls()
        self._v4, self._v6 = _build(intervals)
        self.size = len(intervals)
        return self

    def __contains__(self, address: object) -> bool:
        kind = type(address)
        if kind is ipaddress.IPv4Address:  # the common case first: Session.client_ip
            value = int(address)  # type: ignore[call-overload]
            starts, ends = self._v4
        else:
            if isinstance(address, str):
                try:
                    version, value = _address_int(address)
                except ValueError:
                    return False
            elif isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
                version, value = address.version, int(address)
            else:
                return False
            if version == 6 and value >> 32 == 0xFFFF:  # IPv4-mapped
                version, value = 4, value & 0xFFFFFFFF
            starts, ends = self._v4 if version == 4 else self._v6
        i = bisect.bisect_right(starts, value) - 1
        return i >= 0 and value <= ends[i]

    def __len__(self) -> int:
        return self.size


def _build(intervals: list[tuple[int, int, int]]) -> tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]:
    v4: list[tuple[int, int]] = []
    v6: list[tuple[int, int]] = []
    for version, first, last in intervals:
        if version == 6 and first >> 32 == 0xFFFF and last >> 32 == 0xFFFF:  # IPv4-mapped entry
            v4.append((first & 0xFFFFFFFF, last & 0xFFFFFFFF))
        elif version == 4:
            v4.append((first, last))
        else:
            v6.append((first, last))
    return _merge(v4), _merge(v6)


def _address_int(text: str) -> tuple[int, int]:
    """(version, integer value) of an IP literal; fast path through inet_pton."""
    text = text.strip()
    try:
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except OSError:
        pass
    try:
        return 6, int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    except OSError:
        raise ValueError(f"{text!r} is not an IP address") from None


def parse_interval(text: str) -> tuple[int, int, int]:
    """`(version, first, last)` of a network, an address or an inclusive range `FIRST-LAST`.

    Same rules as `parse_networks` (host bits set is an error), about 10x faster: list files
    with 100,000 entries load without stalling the event loop for seconds.
    """
    entry = text.strip()
    if "-" in entry:
        first_text, _, last_text = entry.partition("-")
        try:
            v1, first = _address_int(first_text)
            v2, last = _address_int(last_text)
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a valid address range ({exc})") from None
        if v1 != v2 or first > last:
            raise ValueError(f"{text!r} is not a valid address range (families differ or first > last)")
        return v1, first, last
    address, slash, length = entry.partition("/")
    try:
        version, value = _address_int(address)
    except ValueError:
        raise ValueError(f"{text!r} is not a valid IP network") from None
    bits = 32 if version == 4 else 128
    if slash and not (length.isdigit() and 0 <= int(length) <= bits and length == str(int(length))):
        raise ValueError(f"{text!r} is not a valid IP network (bad prefix length)")
    prefix = int(length) if slash else bits
    hostmask = (1 << (bits - prefix)) - 1
    if value & hostmask:
        raise ValueError(f"{text!r} is not a valid IP network (host bits set)")
    return version, value, value | hostmask


def parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """`192.0.2.0/24`, `192.0.2.7`, `2001:db8::/32`; host bits set is an error (a typo guard)."""
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid IP network ({exc})") from None


def parse_networks(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """`parse_network`, plus inclusive ranges `FIRST-LAST` (same family, FIRST <= LAST)."""
    if "-" not in text:
        return [parse_network(text)]
    first_text, _, last_text = text.partition("-")
    try:
        first = ipaddress.ip_address(first_text.strip())
        last = ipaddress.ip_address(last_text.strip())
        return list(ipaddress.summarize_address_range(first, last))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{text!r} is not a valid address range ({exc})") from None


def _merge(intervals: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    intervals.sort()
    starts: list[int] = []
    ends: list[int] = []
    for start, end in intervals:
        if ends and start <= ends[-1] + 1:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
    return starts, ends


class DomainSet:
    __slots__ = ("_exact", "_tree", "size")

    def __init__(self, domains: Iterable[str] = (), subdomains: bool = False) -> None:
        self._exact: set[str] = set()
        self._tree: set[str] = set()  # entries that also match every name below them
        self.size = 0
        for raw in domains:
            entry = normalize_domain(raw)
            self.size += 1
            if entry.startswith("."):
                self._tree.add(entry[1:])
            elif subdomains:
                self._tree.add(entry)
            else:
                self._exact.add(entry)

    def __contains__(self, domain: object) -> bool:
        if not isinstance(domain, str) or not domain:
            return False
        name = normalize_domain(domain)
        if name in self._exact or name in self._tree:
            return True
        if not self._tree:
            return False
        while "." in name:
            name = name.split(".", 1)[1]
            if name in self._tree:
                return True
        return False

    def __len__(self) -> int:
        return self.size


def normalize_domain(domain: str) -> str:
    name = domain.strip().lower().rstrip(".")
    if name.startswith("*."):
        name = name[1:]
    return name


class AddressSet:
    __slots__ = ("_addresses", "_domains", "size")

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self._addresses: set[str] = set()
        self._domains: set[str] = set()
        self.size = 0
        for raw in entries:
            entry = raw.strip()
            self.size += 1
            if entry.startswith("@"):
                self._domains.add(normalize_domain(entry[1:]))
            else:
                self._addresses.add(normalize_address(entry))

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, str) or "@" not in address:
            return False
        norm = normalize_address(address)
        return norm in self._addresses or norm.rpartition("@")[2] in self._domains

    def __len__(self) -> int:
        return self.size


def normalize_address(address: str) -> str:
    local, _, domain = address.strip().strip("<>").rpartition("@")
    return f"{local}@{normalize_domain(domain)}"


def _collect(inline: Iterable[str], files: Iterable[Path], parse: Callable[[str], T]) -> list[T]:
    """Parse every entry once with `parse`; errors name `file:line` (inline entries: their index)."""
    parsed: list[T] = []
    problems: list[Problem] = []
    for index, entry in enumerate(inline, 1):
        try:
            parsed.append(parse(entry))
        except ValueError as exc:
            problems.append(Problem(None, None, f"list entry {index}: {exc}"))
    for path in files:
        for number, entry in read_list_file(path):
            try:
                parsed.append(parse(entry))
            except ValueError as exc:
                problems.append(Problem(str(path), number, str(exc)))
    if problems:
        raise ConfigError(problems[:20])
    return parsed


def load_cidr_set(inline: Iterable[str] = (), files: Iterable[Path] = ()) -> CidrSet:
    return CidrSet.from_intervals(_collect(inline, files, parse_interval))


def load_domain_set(inline: Iterable[str] = (), files: Iterable[Path] = (), subdomains: bool = True) -> DomainSet:
    return DomainSet(_collect(inline, files, parse_domain), subdomains=subdomains)


def load_address_set(inline: Iterable[str] = (), files: Iterable[Path] = ()) -> AddressSet:
    return AddressSet(_collect(inline, files, parse_address))


_LABEL_OK = set("abcdefghijklmnopqrstuvwxyz0123456789-_")


def parse_domain(text: str) -> str:
    """Validate a domain entry (`example.com`, `.example.com`, `*.example.com`); returns it normalised."""
    name = normalize_domain(text)
    bare = name[1:] if name.startswith(".") else name
    if not bare or len(bare) > 253 or any(not label or not set(label) <= _LABEL_OK for label in bare.split(".")):
        raise ValueError(f"{text!r} is not a valid domain")
    return name


def parse_address(text: str) -> str:
    """Validate an address entry (`user@example.com` or `@example.com`)."""
    entry = text.strip()
    local, at, domain = entry.strip("<>").rpartition("@")
    if not at or (not local and not entry.startswith("@")):
        raise ValueError(f"{text!r} is not an address or @domain")
    parse_domain(domain)
    return entry


def resolve_list_path(path: Path, base: object) -> Path:
    """A relative list-file path is relative to `base` (the policy directory) when it is a Path."""
    if not path.is_absolute() and isinstance(base, Path):
        return base / path
    return path
