"""Load YAML with line numbers, so every error can say `file:line: message`.

`load_yaml(path)` returns the data (plain dicts/lists/scalars, like `yaml.safe_load`) and a
map from key paths (tuples of keys/indexes) to 1-based line numbers. `locate(lines, loc)`
finds the line of the deepest known prefix of a pydantic error location.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from smtpguard.errors import ConfigError, Problem

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

LineMap = dict[tuple[Any, ...], int]


def parse_yaml_text(text: str, filename: str) -> tuple[Any, LineMap]:
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(Problem(filename, line, f"YAML syntax error: {exc.problem or exc}")) from None
    except yaml.YAMLError as exc:
        raise ConfigError(Problem(filename, None, f"YAML error: {exc}")) from None
    lines: LineMap = {}
    if node is None:
        return None, lines
    return _convert(node, (), lines, filename), lines


def load_yaml(path: Path) -> tuple[Any, LineMap]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(Problem(str(path), None, f"cannot read: {exc.strerror}")) from None
    except UnicodeDecodeError:
        raise ConfigError(Problem(str(path), None, "not valid UTF-8")) from None
    return parse_yaml_text(text, str(path))


def _convert(node: yaml.Node, path: tuple[Any, ...], lines: LineMap, filename: str) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node, filename)
            if key in out:
                raise ConfigError(Problem(filename, key_node.start_mark.line + 1, f"duplicate key {key!r}"))
            lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = _convert(value_node, (*path, key), lines, filename)
            lines[(*path, key)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(child, (*path, i), lines, filename) for i, child in enumerate(node.value)]
    return _scalar(node, filename)


def _scalar(node: yaml.Node, filename: str) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError(Problem(filename, node.start_mark.line + 1, "a mapping key must be a plain value"))
    loader = _Loader("")
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        raise ConfigError(Problem(filename, node.start_mark.line + 1, f"bad value: {exc}")) from None
    finally:
        loader.dispose()


def locate(lines: LineMap, loc: Sequence[Any]) -> int | None:
    path = tuple(loc)
    while True:
        if path in lines:
            return lines[path]
        if not path:
            return None
        path = path[:-1]
