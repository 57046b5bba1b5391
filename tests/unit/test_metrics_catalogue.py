"""docs/metrics.md is generated from smtpguard/metrics.py and must not drift; names follow the
Prometheus conventions and labels never carry addresses."""

from __future__ import annotations

from pathlib import Path

from smtpguard import metrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
ALLOWED_LABELS = {"listener", "stage", "check", "outcome", "rule", "action", "mode", "verb", "reply_class", "kind",
                  "result", "type", "zone", "backend", "op", "version"}


def test_doc_matches_code() -> None:
    assert DOC.read_text() == metrics.render_markdown(), "run: python -m smtpguard.metrics > docs/metrics.md"


def test_naming_conventions() -> None:
    for name, kind, labels, doc in metrics.catalogue():
        assert name.startswith("smtpguard_"), name
        if kind == "counter":
            assert name.endswith("_total")
        if "seconds" in name or "bytes" in name:
            assert name.endswith(("_seconds", "_bytes", "_timestamp_seconds")), name
        assert set(labels) <= ALLOWED_LABELS, (name, labels)
        assert doc
