"""`smtpguard explain`: walk one made-up session through the policy and show every step.

For each stage it prints the checks consulted (outcomes, time, cached or not), every rule
evaluated (matched or not, with its file:line), shadow verdicts, and the verdict with the
exact reply the client would get. Invariant: the output is built only from the decision
records the runner returns (`Verdict.record`), i.e. exactly what the proxy logs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from smtpguard.policy.model import Policy
from smtpguard.policy.scenario import StageRun


def verdict_text(run: StageRun) -> str:
    v = run.verdict
    if v.reply is not None:
        suffix = " and close the connection" if v.disconnect else ""
        return f"reply {v.reply}{suffix}"
    if v.accepted:
        return "accepted by rule (no further rules at this stage" + (
            ", later stages skipped)" if v.record.get("skipped") else ")")
    if v.record.get("skipped"):
        return "skipped: " + str(v.record["skipped"])
    if run.stage.value == "disconnect":
        return "(bookkeeping only)"
    return "no objection (the proxy forwards the command upstream)"


def render_runs(runs: list[StageRun], policy: Policy, out: Callable[[str], None]) -> None:
    where = {r.name: f"{r.file}:{r.line}" for r in policy.rules}
    for run in runs:
        rec: dict[str, Any] = run.verdict.record
        title = run.stage.value + (f" <{run.recipient}>" if run.recipient is not None else "")
        out(f"== {title}")
        checks = rec.get("checks") or {}
        for name, info in sorted(checks.items()):
            outcomes = ", ".join(info.get("outcomes") or []) or "(no outcome)"
            timing = "cached" if info.get("cached") else f"{info.get('ms', 0):.2f} ms"
            error = f"  [{info['error']}]" if info.get("error") else ""
            out(f"  check {name:<14} {outcomes}  ({timing}){error}")
        hits = {h.rule: h for h in run.verdict.hits}
        for item in rec.get("evaluated") or []:
            name, matched = item["rule"], item["matched"]
            mark = "x" if matched else " "
            line = f"  [{mark}] {name:<28} {where.get(name, '')}"
            hit = hits.get(name)
            if hit is not None:
                line += f"  -> {hit.action}"
                if hit.mode == "shadow":
                    line += " (shadow" + (f", would reply {hit.reply})" if hit.reply else ")")
            out(line)
        for name, hit in hits.items():
            if name.startswith("threshold."):
                shadow = " (shadow)" if hit.mode == "shadow" else ""
                out(f"  [x] {name:<28} {hit.file}:{hit.line}  -> {hit.action}{shadow}")
        if rec.get("score"):
            out(f"  score {rec['score']:g}")
        for hname, hvalue in run.verdict.headers:
            out(f"  add header {hname}: {hvalue}")
        if run.verdict.delay:
            out(f"  delay {run.verdict.delay:g}s")
        out(f"  verdict: {verdict_text(run)}")
