"""CheckRegistry: discovery of built-ins, entry points, unknown/broken names, option problems."""

from __future__ import annotations

from typing import Any

import pytest

from smtpguard.checks import registry as registry_module
from smtpguard.checks.base import CheckEnv
from smtpguard.checks.envelope import EnvelopeCheck
from smtpguard.checks.registry import CheckRegistry
from smtpguard.errors import ConfigError

ENV = CheckEnv(hostname="mx.example.net")


def test_discovers_builtins_and_skips_helpers() -> None:
    registry = CheckRegistry.discover(entry_points=False)
    assert {"helo", "envelope", "relay", "protocol", "command"} <= set(registry.names())
    assert "base" not in registry and "registry" not in registry
    for name in registry.names():
        cls = registry.get(name)
        assert cls is not None and cls.name == name


def test_entry_points_do_not_override_builtins(monkeypatch: pytest.MonkeyPatch) -> None:
    class Other(EnvelopeCheck):
        name = "other_check"

    class Shadowing(EnvelopeCheck):
        name = "helo"

    class EP:
        def __init__(self, name: str, obj: Any) -> None:
            self.name, self.value, self._obj = name, f"pkg:{name}", obj

        def load(self) -> Any:
            if self._obj is None:
                raise ImportError("no module named pkg")
            return self._obj

    eps = [EP("other_check", Other), EP("helo", Shadowing), EP("broken", None)]
    monkeypatch.setattr(registry_module.importlib.metadata, "entry_points", lambda group: eps)
    registry = CheckRegistry.discover()
    assert registry.get("other_check") is Other
    assert registry.get("helo") is not Shadowing
    assert "broken" not in registry
    assert "failed to import (ImportError: no module named pkg)" in registry.unknown_message("broken")


def test_unknown_and_option_problems() -> None:
    registry = CheckRegistry([EnvelopeCheck])
    assert registry.unknown_message("nope") == "unknown check 'nope' (known checks: envelope)"
    with pytest.raises(ConfigError) as info:
        registry.create("nope", {}, ENV, file="f.yaml", line=2)
    assert str(info.value) == "f.yaml:2: unknown check 'nope' (known checks: envelope)"
    with pytest.raises(ConfigError) as info:
        registry.create("envelope", {"max_recipients": "lots", "colour": 1}, ENV, file="f.yaml", line=2,
                        key_lines={"max_recipients": 3, "colour": 4})
    rendered = [p.render() for p in info.value.problems]
    assert rendered[0].startswith("f.yaml:3: checks.envelope.max_recipients: ")
    assert rendered[1].startswith("f.yaml:4: checks.envelope.colour: unknown option (options of envelope:")


def test_create_validates_and_builds() -> None:
    check = CheckRegistry([EnvelopeCheck]).create("envelope", {"max_recipients": 7}, ENV, file="f", line=1)
    assert isinstance(check, EnvelopeCheck) and check.options.max_recipients == 7  # type: ignore[attr-defined]
