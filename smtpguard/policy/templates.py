"""Reply and header templates: `{client_ip}`, `{helo}`, `{sender}`, `{recipient}`, `{txn}`,
`{score}`, `{command}` and check fields `{<check>.<field>}`; `{{` and `}}` are literal braces.

Invariants:
- A template is parsed once, at load time, into literal parts and field names; unknown field
  names, format specs and conversions are load errors (`TemplateError`).
- Rendering never re-parses: a value containing `{...}` is inserted as text, so expansion is
  one pass and cannot be steered by the client.
- Every inserted value is passed through `sanitize_text` (no CR/LF/control characters) and
  capped at `FIELD_LIMIT` characters; a missing value renders as the empty string.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass

from smtpguard.reply import sanitize_text

FIELD_LIMIT = 100
BUILTIN_FIELDS = frozenset({"client_ip", "client_name", "helo", "sender", "recipient", "txn", "score", "command",
                            "listener", "rule"})
_CHECK_FIELD = re.compile(r"^[a-z][a-z0-9_]*\.[A-Za-z0-9_]+$")


class TemplateError(ValueError):
    """A template names an unknown field or uses format syntax we do not support."""


@dataclass(frozen=True, slots=True)
class Template:
    parts: tuple[tuple[str, str | None], ...]  # (literal text, field name or None)
    source: str

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(f for _, f in self.parts if f is not None)

    @property
    def is_literal(self) -> bool:
        return not self.fields

    def render(self, lookup: Callable[[str], str | None]) -> str:
        out: list[str] = []
        for literal, field_name in self.parts:
            out.append(literal)
            if field_name is not None:
                value = lookup(field_name)
                if value:
                    out.append(sanitize_text(value, FIELD_LIMIT))
        return "".join(out)


def parse_template(text: str) -> Template:
    """Parse `text`; raise `TemplateError` naming the first bad field."""
    try:
        pieces = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise TemplateError(f"bad template {text!r}: {exc} (write {{{{ and }}}} for literal braces)") from None
    parts: list[tuple[str, str | None]] = []
    for literal, field_name, spec, conversion in pieces:
        if field_name is None:
            parts.append((literal, None))
            continue
        if spec or conversion:
            raise TemplateError(f"template field {{{field_name}}} may not carry a format spec or conversion")
        if field_name not in BUILTIN_FIELDS and not _CHECK_FIELD.match(field_name):
            known = ", ".join(sorted(BUILTIN_FIELDS))
            raise TemplateError(f"unknown template field {{{field_name}}} (known: {known}, or {{check.field}})")
        parts.append((literal, field_name))
    return Template(tuple(parts), text)


def check_fields(template: Template) -> tuple[str, ...]:
    """The check names a template reads fields from (`{dnsbl.zone}` -> `dnsbl`)."""
    return tuple(f.split(".", 1)[0] for f in template.fields if "." in f)
