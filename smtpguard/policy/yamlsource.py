"""YAML with line numbers: every mapping, list and key remembers where it was written.

Invariants:
- `parse_yaml(text, file)` never raises anything but `ConfigError`; a syntax error becomes
  one `file:line: message` problem (the line of the error mark, 1-based).
- Mappings come back as `LineDict` (with `.line` and `.key_lines[key]`), lists as `LineList`
  (with `.line` and `.item_lines[i]`), scalars as the plain values the YAML safe loader
  builds (str, int, float, bool, None). Tags other than the core schema are errors.
- A key repeated in one mapping is an error (plain YAML would silently keep the last one).
- Only one document per file; an empty file is an empty mapping.
- Scalars resolve like YAML 1.2's core schema, not 1.1: only true/false are booleans (`no`,
  `on`, `off`, `y` stay strings: a rule called `no` or a country code `NO` is not False),
  and `10:30` is a string, not a base-60 integer.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from smtpguard.errors import ConfigError, Problem


class LineDict(dict[str, Any]):
    """A mapping that knows its own line and the line of each of its keys."""

    line: int
    key_lines: dict[str, int]

    def __init__(self, line: int = 0) -> None:
        super().__init__()
        self.line = line
        self.key_lines = {}

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class LineList(list[Any]):
    """A sequence that knows its own line and the line of each item."""

    line: int
    item_lines: list[int]

    def __init__(self, line: int = 0) -> None:
        super().__init__()
        self.line = line
        self.item_lines = []

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if index < len(self.item_lines) else self.line


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema booleans and numbers."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (
        "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
                              list("-+0123456789"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+.0123456789"),
)


def line_of(value: Any, default: int) -> int:
    """The line of a mapping or list value, else `default` (scalars carry no line)."""
    return int(getattr(value, "line", default))


def parse_yaml(text: str, file: str) -> LineDict | Any:
    """Parse one YAML document into Line* containers; `ConfigError` on any problem."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return LineDict(1)
        return _convert(node, loader, file)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        message = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(Problem(file, line, f"YAML syntax error: {message}")) from None
    except yaml.YAMLError as exc:
        raise ConfigError(Problem(file, None, f"YAML syntax error: {exc}")) from None
    finally:
        loader.dispose()


def _convert(node: yaml.Node, loader: _Loader, file: str) -> Any:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        if node.tag not in ("tag:yaml.org,2002:map",):
            raise ConfigError(Problem(file, line, f"unsupported YAML tag {node.tag}"))
        out = LineDict(line)
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError(Problem(file, key_line, "a mapping key must be a plain name"))
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise ConfigError(Problem(file, key_line, "YAML merge keys (<<) are not supported"))
            key = loader.construct_object(key_node)
            if not isinstance(key, str):
                key = str(key).lower() if isinstance(key, bool) else str(key)
            if key in out:
                first = out.key_lines[key]
                raise ConfigError(Problem(file, key_line, f"duplicate key {key!r} (first at line {first})"))
            out.key_lines[key] = key_line
            out[key] = _convert(value_node, loader, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = LineList(line)
        for item in node.value:
            items.item_lines.append(item.start_mark.line + 1)
            items.append(_convert(item, loader, file))
        return items
    if node.tag.startswith("tag:yaml.org,2002:") and node.tag.rsplit(":", 1)[1] in _SCALARS:
        return loader.construct_object(node)
    raise ConfigError(Problem(file, line, f"unsupported YAML tag {node.tag}"))


_SCALARS = frozenset({"str", "int", "float", "bool", "null"})
