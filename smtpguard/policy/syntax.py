"""Parsing the `if:` / `unless:` condition language into `conditions` nodes.

The grammar (docs/policy.md has the reference):
- a condition is a mapping with exactly ONE key, or a list of conditions (= all of them);
- `all: [..]`, `any: [..]`, `not: cond` combine;
- `outcome: name | [names]` is true when any of the outcomes was emitted;
- string facts (`helo`, `sender`, ...) take a string (equality, case-insensitive; `@file` =
  list file), a list of those (any of them), or a one-key mapping `equals`/`glob`/`regex`/
  `list`/`present`;
- `client_ip: cidr | @file | [..]`, booleans `tls`/`esmtp`/`proxied`/`null_sender`,
  numbers `size`/`score`/`recipients` with `{gt|ge|lt|le|eq: N}`, `header: {name, regex|present}`.

Invariants: every problem is reported through `Reporter.error` with the line of the key or
item at fault, exactly once, and parsing continues with the next rule; the parser never
raises. A fact used at a stage before it exists is an error (`Stage.facts_available_at`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Protocol

from smtpguard.lists import AddressSet, CidrSet, DomainSet, parse_network
from smtpguard.policy.conditions import (
    BOOL_FACTS,
    COMPARATORS,
    NUMBER_FACTS,
    STRING_FACTS,
    All,
    AnyCond,
    AnyOf,
    Compare,
    Condition,
    Equals,
    Glob,
    InList,
    MatchBool,
    MatchHeader,
    MatchIP,
    MatchString,
    Not,
    Outcome,
    Present,
    Regex,
    StringMatcher,
)
from smtpguard.policy.yamlsource import LineDict, LineList, line_of
from smtpguard.stage import Stage
from smtpguard.units import parse_size

_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext
CONDITION_KEYS = ("all", "any", "not", "outcome", "client_ip", "header", *STRING_FACTS, *BOOL_FACTS, *NUMBER_FACTS)


class Reporter(Protocol):
    """What the parser needs from the loader."""

    def error(self, line: int, message: str) -> None: ...

    def read_list(self, ref: str, line: int) -> list[tuple[int, str]] | None:
        """Entries of the list file `@ref` (relative to the policy file), None if unreadable."""
        ...

    def resolve_outcome(self, name: str, line: int, stage: Stage) -> str | None:
        """The check owning outcome `name` if it may be tested at `stage` (else report, None)."""
        ...


class ConditionParser:
    def __init__(self, reporter: Reporter, stage: Stage) -> None:
        self.r = reporter
        self.stage = stage

    def parse(self, value: Any, line: int) -> Condition | None:
        if isinstance(value, list):
            if not value:
                self.r.error(line, "an empty condition list; remove it or add a condition")
                return None
            items = self._items(value, line)
            return None if items is None else (items[0] if len(items) == 1 else All(items))
        if not isinstance(value, LineDict):
            self.r.error(line, "a condition must be a mapping like `outcome: spf.fail` or a list of them, "
                               f"not {value!r}")
            return None
        line = value.line
        if len(value) != 1:
            keys = ", ".join(value) or "none"
            self.r.error(line, f"a condition has exactly one key (found: {keys}); "
                               "to require several, write them as a list or under `all:`")
            return None
        key, arg = next(iter(value.items()))
        kline = value.line_of(key)
        handler = self._HANDLERS.get(key)
        if handler is not None:
            return handler(self, arg, kline)
        if key in STRING_FACTS:
            return self._string(key, arg, kline)
        if key in BOOL_FACTS:
            return self._bool(key, arg, kline)
        if key in NUMBER_FACTS:
            return self._number(key, arg, kline)
        self.r.error(kline, f"unknown condition {key!r} (known: {', '.join(CONDITION_KEYS)})")
        return None

    # ------------------------------------------------------------ combinators

    def _items(self, value: list[Any], line: int) -> tuple[Condition, ...] | None:
        out: list[Condition] = []
        ok = True
        for i, item in enumerate(value):
            iline = value.line_of(i) if isinstance(value, LineList) else line
            cond = self.parse(item, line_of(item, iline))
            if cond is None:
                ok = False
            else:
                out.append(cond)
        return tuple(out) if ok else None

    def _all(self, arg: Any, line: int) -> Condition | None:
        return self._combine(arg, line, "all", All)

    def _any(self, arg: Any, line: int) -> Condition | None:
        return self._combine(arg, line, "any", AnyCond)

    def _combine(self, arg: Any, line: int, key: str,
                 kind: Callable[[tuple[Condition, ...]], Condition]) -> Condition | None:
        if not isinstance(arg, list) or not arg:
            self.r.error(line, f"`{key}:` takes a non-empty list of conditions")
            return None
        items = self._items(arg, line)
        return None if items is None else kind(items)

    def _not(self, arg: Any, line: int) -> Condition | None:
        cond = self.parse(arg, line_of(arg, line))
        return None if cond is None else Not(cond)

    # ------------------------------------------------------------ leaves

    def _outcome(self, arg: Any, line: int) -> Condition | None:
        names = arg if isinstance(arg, list) else [arg]
        if not names or not all(isinstance(n, str) for n in names):
            self.r.error(line, "`outcome:` takes an outcome name like spf.fail or a list of them")
            return None
        checks: set[str] = set()
        ok = True
        for i, name in enumerate(names):
            nline = names.line_of(i) if isinstance(names, LineList) else line
            check = self.r.resolve_outcome(name, nline, self.stage)
            if check is None:
                ok = False
            else:
                checks.add(check)
        return Outcome(frozenset(names), tuple(sorted(checks))) if ok else None

    def _available(self, fact: str, since: Stage, line: int) -> bool:
        if since.facts_available_at(self.stage):
            return True
        self.r.error(line, f"`{fact}` is not known at the {self.stage.value} stage (it is known from the "
                           f"{since.value} stage on)")
        return False

    def _client_ip(self, arg: Any, line: int) -> Condition | None:
        entries = arg if isinstance(arg, list) else [arg]
        nets: list[Any] = []
        sources: list[str] = []
        ok = True
        for i, entry in enumerate(entries):
            eline = entries.line_of(i) if isinstance(entries, LineList) else line
            if not isinstance(entry, str):
                self.r.error(eline, f"`client_ip:` entries are CIDR strings or @file, not {entry!r}")
                ok = False
                continue
            if entry.startswith("@"):
                listed = self.r.read_list(entry, eline)
                if listed is None:
                    ok = False
                    continue
                sources.append(entry)
                for lline, item in listed:
                    try:
                        nets.append(parse_network(item))
                    except ValueError as exc:
                        self.r.error(eline, f"{entry[1:]}:{lline}: {exc}")
                        ok = False
                continue
            try:
                nets.append(parse_network(entry))
                sources.append(entry)
            except ValueError as exc:
                self.r.error(eline, str(exc))
                ok = False
        return MatchIP(CidrSet(nets), ", ".join(sources)) if ok else None

    def _string(self, fact: str, arg: Any, line: int) -> Condition | None:
        since, kind, _ = STRING_FACTS[fact]
        if not self._available(fact, since, line):
            return None
        matcher = self._string_matcher(fact, kind, arg, line)
        return None if matcher is None else MatchString(fact, matcher)

    def _string_matcher(self, fact: str, kind: str, arg: Any, line: int) -> StringMatcher | None:
        if isinstance(arg, str):
            return self._list(arg, kind, line) if arg.startswith("@") else Equals(frozenset({arg.lower()}))
        if isinstance(arg, list):
            if not arg:
                self.r.error(line, f"`{fact}:` has an empty list")
                return None
            parts: list[StringMatcher] = []
            plain: set[str] = set()
            for i, item in enumerate(arg):
                iline = arg.line_of(i) if isinstance(arg, LineList) else line
                if not isinstance(item, str):
                    self.r.error(iline, f"`{fact}:` list entries are strings, not {item!r}")
                    return None
                if item.startswith("@"):
                    listed = self._list(item, kind, iline)
                    if listed is None:
                        return None
                    parts.append(listed)
                else:
                    plain.add(item.lower())
            if plain:
                parts.insert(0, Equals(frozenset(plain)))
            return parts[0] if len(parts) == 1 else AnyOf(tuple(parts))
        if isinstance(arg, LineDict) and len(arg) == 1:
            how, value = next(iter(arg.items()))
            hline = arg.line_of(how)
            return self._matcher_form(fact, kind, how, value, hline)
        self.r.error(line, f"`{fact}:` takes a string, a list, or one of equals/glob/regex/list/present")
        return None

    def _matcher_form(self, fact: str, kind: str, how: str, value: Any, line: int) -> StringMatcher | None:
        values = value if isinstance(value, list) else [value]
        if how == "present":
            if not isinstance(value, bool):
                self.r.error(line, "`present:` takes true or false")
                return None
            return Present(value)
        if not values or not all(isinstance(v, str) for v in values):
            self.r.error(line, f"`{how}:` takes a string or a list of strings")
            return None
        if how == "equals":
            return Equals(frozenset(v.lower() for v in values))
        if how == "glob":
            return Glob(tuple(v.lower() for v in values))
        if how == "regex":
            compiled = []
            for v in values:
                try:
                    compiled.append(re.compile(v, re.IGNORECASE))
                except re.error as exc:
                    self.r.error(line, f"bad regex {v!r}: {exc}")
                    return None
            return Regex(tuple(compiled))
        if how == "list":
            if len(values) != 1 or not values[0].startswith("@"):
                self.r.error(line, "`list:` takes one @file reference")
                return None
            return self._list(values[0], kind, line)
        self.r.error(line, f"unknown matcher {how!r} for `{fact}` (known: equals, glob, regex, list, present)")
        return None

    def _list(self, ref: str, kind: str, line: int) -> InList | None:
        listed = self.r.read_list(ref, line)
        if listed is None:
            return None
        entries = [e for _, e in listed]
        members: DomainSet | AddressSet | frozenset[str]
        if kind == "domain":
            members = DomainSet(entries)
        elif kind == "address":
            members = AddressSet(entries)
        else:
            members = frozenset(e.lower() for e in entries)
        return InList(members, ref[1:])

    def _bool(self, fact: str, arg: Any, line: int) -> Condition | None:
        if not self._available(fact, BOOL_FACTS[fact][0], line):
            return None
        if not isinstance(arg, bool):
            self.r.error(line, f"`{fact}:` takes true or false, not {arg!r}")
            return None
        return MatchBool(fact, arg)

    def _number(self, fact: str, arg: Any, line: int) -> Condition | None:
        if not self._available(fact, NUMBER_FACTS[fact][0], line):
            return None
        if not isinstance(arg, LineDict) or len(arg) != 1 or next(iter(arg)) not in COMPARATORS:
            self.r.error(line, f"`{fact}:` takes one comparison like {{ge: 10}} (one of {', '.join(COMPARATORS)})")
            return None
        op, raw = next(iter(arg.items()))
        number = raw
        if fact == "size":
            try:
                number = parse_size(raw)  # the config's units: 10MB = 10^7 bytes, 10MiB = 10 * 2^20
            except ValueError:
                number = None
        if isinstance(number, bool) or not isinstance(number, int | float):
            self.r.error(arg.line_of(op), f"`{fact}: {{{op}: ...}}` needs a number, not {raw!r}")
            return None
        return Compare(fact, op, float(number))

    def _header(self, arg: Any, line: int) -> Condition | None:
        if not self._available("header", Stage.DATA, line):
            return None
        if not isinstance(arg, LineDict) or set(arg) - {"name", "regex", "present"} or "name" not in arg:
            self.r.error(line, "`header:` takes {name: Header-Name, regex: pattern} or {name: ..., present: true}")
            return None
        name = arg["name"]
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            self.r.error(arg.line_of("name"), f"bad header name {name!r}")
            return None
        if "regex" in arg and "present" in arg:
            self.r.error(line, "`header:` takes regex or present, not both")
            return None
        if "regex" in arg:
            try:
                pattern = re.compile(str(arg["regex"]), re.IGNORECASE)
            except re.error as exc:
                self.r.error(arg.line_of("regex"), f"bad regex {arg['regex']!r}: {exc}")
                return None
            return MatchHeader(name, pattern)
        present = arg.get("present", True)
        if not isinstance(present, bool):
            self.r.error(arg.line_of("present"), "`present:` takes true or false")
            return None
        cond = MatchHeader(name, None)
        return cond if present else Not(cond)

    _HANDLERS: dict[str, Callable[[ConditionParser, Any, int], Condition | None]] = {
        "all": _all,
        "any": _any,
        "not": _not,
        "outcome": _outcome,
        "client_ip": _client_ip,
        "header": _header,
    }
