"""Built-in policies by name (`default`, ...), for running without a policy directory.

Invariant: a name resolves to the packaged `smtpguard/defaults/policies/<name>.yaml` when it
exists, else (source checkouts, editable installs) to `<repo>/policies/<name>.yaml`; `@list`
references resolve relative to that file's directory. Unknown names are a `ConfigError`.
"""

from __future__ import annotations

import re
from pathlib import Path

import smtpguard
from smtpguard.errors import ConfigError, Problem
from smtpguard.policy.loader import Source

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def builtin_candidates(name: str) -> list[Path]:
    package = Path(smtpguard.__file__).resolve().parent
    return [package / "defaults" / "policies" / f"{name}.yaml", package.parent / "policies" / f"{name}.yaml"]


def builtin_source(name: str) -> Source:
    if not _NAME.match(name):
        raise ConfigError(Problem(None, None, f"bad built-in policy name {name!r}"))
    for path in builtin_candidates(name):
        if path.is_file():
            try:
                return Source(str(path), path.read_text(encoding="utf-8"), path.parent)
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(Problem(str(path), None, f"cannot read built-in policy: {exc}")) from None
    raise ConfigError(Problem(None, None, f"no built-in policy called {name!r}"))
