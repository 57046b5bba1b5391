"""Finding checks by name: built-in modules plus the `smtpguard.checks` entry-point group.

Invariants:
- every module of the `smtpguard.checks` package except `base` and `registry` (and names
  starting with `_`) is imported once; a module exposing `CHECK = <class>` registers that class
  under `CHECK.name`; modules without `CHECK` are helpers and are skipped;
- a module that fails to import does not break the others: its error is kept in
  `import_errors` and named when a policy asks for that check;
- a built-in wins over an entry point of the same name (logged);
- `create` turns option validation errors (pydantic) into `file:line: message` problems and
  never lets a pydantic exception escape.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import pkgutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from smtpguard.checks.base import Check, CheckEnv
from smtpguard.errors import ConfigError, Problem

log = logging.getLogger("smtpguard.checks")

_SKIP = frozenset({"base", "registry"})
ENTRY_POINT_GROUP = "smtpguard.checks"


class CheckRegistry:
    """Check classes by name."""

    def __init__(self, classes: Iterable[type[Any]] = ()) -> None:
        self._classes: dict[str, type[Any]] = {}
        self.import_errors: dict[str, str] = {}
        for cls in classes:
            self.add(cls)

    def add(self, cls: type[Any]) -> None:
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{cls!r} has no check name")
        self._classes[name] = cls

    @classmethod
    def discover(cls, *, entry_points: bool = True) -> CheckRegistry:
        """Built-in check modules plus (optionally) installed entry points."""
        registry = cls()
        import smtpguard.checks as package

        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
            if info.name in _SKIP or info.name.startswith("_"):
                continue
            module_name = f"{package.__name__}.{info.name}"
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:  # a broken module must not hide the others
                registry.import_errors[info.name] = f"{type(exc).__name__}: {exc}"
                log.error("check module %s failed to import: %s", module_name, exc)
                continue
            check_cls = getattr(module, "CHECK", None)
            if check_cls is not None:
                registry.add(check_cls)
        if entry_points:
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                try:
                    check_cls = ep.load()
                except Exception as exc:
                    registry.import_errors[ep.name] = f"{type(exc).__name__}: {exc}"
                    log.error("check entry point %s failed to load: %s", ep.name, exc)
                    continue
                name = getattr(check_cls, "name", ep.name)
                if name in registry._classes:
                    log.warning("entry point %s ignored: a built-in check is called %s", ep.value, name)
                    continue
                registry.add(check_cls)
        return registry

    def names(self) -> list[str]:
        return sorted(self._classes)

    def get(self, name: str) -> type[Any] | None:
        return self._classes.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def unknown_message(self, name: str) -> str:
        if name in self.import_errors:
            return f"check {name!r} is not available: its module failed to import ({self.import_errors[name]})"
        known = ", ".join(self.names()) or "none"
        return f"unknown check {name!r} (known checks: {known})"

    def create(self, name: str, options: Mapping[str, Any], env: CheckEnv, *, file: str, line: int,
               key_lines: Mapping[str, int] | None = None, policy_dir: Path | None = None) -> Check:
        """Validate `options` with the check's Options model and build the check.

        Option validators get the pydantic context `{"policy_dir": Path | None}` so they can
        resolve `@file` values relative to the policy directory.
        """
        cls = self._classes.get(name)
        if cls is None:
            raise ConfigError(Problem(file, line, self.unknown_message(name)))
        key_lines = key_lines or {}
        try:
            opts = cls.Options.model_validate(dict(options), context={"policy_dir": policy_dir})
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                loc = [str(p) for p in err.get("loc", ())]
                where = key_lines.get(loc[0], line) if loc else line
                path = ".".join(["checks", name, *loc])
                msg = err.get("msg", "invalid value")
                if err.get("type") == "extra_forbidden":
                    msg = f"unknown option (options of {name}: {', '.join(sorted(cls.Options.model_fields))})"
                problems.append(Problem(file, where, f"{path}: {msg}"))
            raise ConfigError(problems) from None
        try:
            check = cls(opts, env)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(Problem(file, line, f"check {name}: {exc}")) from None
        return check  # type: ignore[no-any-return]
