"""Every policy example in the docs loads with the real loader and registry.

Convention (stated at the top of docs/policy.md): a ```yaml block in docs/**/*.md whose first
line is `# policy` is a complete policy file. List files such examples name live in
tests/data/docs/. Line numbers of problems point into the Markdown file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from smtpguard.checks.base import CheckEnv
from smtpguard.checks.registry import CheckRegistry
from smtpguard.errors import ConfigError
from smtpguard.policy.defaults import DEFAULT_REPLIES
from smtpguard.policy.loader import Source, load_sources

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
LISTS = REPO / "tests" / "data" / "docs"
FENCE = re.compile(r"^```yaml[ \t]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def policy_blocks() -> list[tuple[str, int, str]]:
    """(markdown file, line of the block's first line, text) for every `# policy` block."""
    out = []
    for md in sorted(DOCS.rglob("*.md")):
        text = md.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            body = m.group(1)
            if body.split("\n", 1)[0].strip() == "# policy":
                out.append((str(md.relative_to(REPO)), text.count("\n", 0, m.start(1)) + 1, body))
    return out


BLOCKS = policy_blocks()
REGISTRY = CheckRegistry.discover(entry_points=False)


def test_there_are_policy_examples() -> None:
    assert len([b for b in BLOCKS if b[0] == "docs/policy.md"]) >= 8


@pytest.mark.parametrize(("md", "line", "body"), BLOCKS, ids=[f"{b[0]}:{b[1]}" for b in BLOCKS])
def test_policy_example_loads(md: str, line: int, body: str) -> None:
    padded = "\n" * (line - 1) + body  # problems then name the Markdown line
    try:
        loaded = load_sources([Source(md, padded, LISTS)], CheckEnv(hostname="mx.example.net"), REGISTRY)
    except ConfigError as exc:
        pytest.fail("\n".join(p.render() for p in exc.problems), pytrace=False)
    assert not loaded.warnings, [w.render() for w in loaded.warnings]


def test_default_reply_table_in_docs_matches_code() -> None:
    text = (DOCS / "policy.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\w+) \| (reject|tempfail|disconnect) \| `([^`]+)` \|$", text, re.MULTILINE)
    documented = {(stage, action): reply for stage, action, reply in rows}
    assert documented == {(s.value, a): str(r) for (s, a), r in DEFAULT_REPLIES.items()}
