"""Property tests: evaluation is deterministic whatever order checks finish in, and every reply
the engine emits is valid and cannot be steered by client-controlled text."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_fakes import env, fake_registry, reset_script, session, transaction

from smtpguard.policy.loader import Source, load_sources
from smtpguard.policy.runner import PolicyRunner, PolicyVersion
from smtpguard.reply import parse_reply
from smtpguard.stage import Stage

CONNECT_OUTCOMES = {
    "conn": ("hit", "miss"),
    "dnsbl": ("listed", "not_listed", "zen"),
    "slow": ("done",),
}
ACTIONS = ["reject", "tempfail", "continue", "accept", "score", "disconnect"]


@st.composite
def rule_texts(draw: st.DrawFn) -> str:
    """A random connect-stage policy over three concurrent fake checks."""
    rules = []
    for i in range(draw(st.integers(1, 6))):
        names = draw(st.lists(st.sampled_from([f"{c}.{o}" for c, os in CONNECT_OUTCOMES.items() for o in os]),
                              min_size=1, max_size=4, unique=True))
        kind = draw(st.sampled_from(["any", "all", "not"]))
        if kind == "not":
            cond = f"{{not: {{outcome: [{', '.join(names)}]}}}}"
        else:
            cond = f"{{{kind}: [{', '.join(f'{{outcome: {n}}}' for n in names)}]}}"
        action = draw(st.sampled_from(ACTIONS))
        mode = draw(st.sampled_from(["enforce", "shadow"]))
        extra = ", points: 3" if action == "score" else ""
        extra += f", reply: '554 5.7.{i} r{i}'" if action == "reject" else ""
        rules.append(f"  - {{name: r{i}, stage: connect, if: {cond}, action: {action}, mode: {mode}{extra}}}")
    thresholds = "thresholds:\n  connect: {reject: 6}\n" if draw(st.booleans()) else ""
    return "rules:\n" + "\n".join(rules) + "\n" + thresholds


def make_runner(text: str) -> PolicyRunner:
    r = PolicyRunner(None, env(), registry=fake_registry())
    r._activate(PolicyVersion(load_sources([Source("p.yaml", text, None)], env(), fake_registry())))
    return r


def summary(v: Any) -> tuple[Any, ...]:
    return (str(v.reply) if v.reply else None, v.disconnect, v.accepted, v.score,
            tuple((h.rule, h.action, h.mode, h.reply) for h in v.hits), v.headers)


async def evaluate_with_order(text: str, outcomes: dict[str, tuple[str, ...]], order: list[str] | None) -> Any:
    script = reset_script()
    script.outcomes.update(outcomes)
    if order is not None:
        script.gates.update({name: asyncio.Event() for name in order})
    r = make_runner(text)
    task = asyncio.create_task(r.evaluate(Stage.CONNECT, session(), None))
    if order is not None:
        while not task.done():
            for name in order:  # finish the waiting checks in this order, one per loop turn
                await asyncio.sleep(0)
                script.gates[name].set()
                await asyncio.sleep(0)
            await asyncio.sleep(0)
    return summary(await task)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=rule_texts(),
       outcomes=st.fixed_dictionaries({c: st.lists(st.sampled_from(os), min_size=1, max_size=2, unique=True).map(tuple)
                                       for c, os in CONNECT_OUTCOMES.items()}),
       order=st.permutations(list(CONNECT_OUTCOMES)))
def test_same_inputs_same_verdict_whatever_the_completion_order(
        text: str, outcomes: dict[str, tuple[str, ...]], order: list[str]) -> None:
    baseline = asyncio.run(evaluate_with_order(text, outcomes, None))
    assert asyncio.run(evaluate_with_order(text, outcomes, order)) == baseline
    assert asyncio.run(evaluate_with_order(text, outcomes, list(reversed(order)))) == baseline


HOSTILE = st.text(alphabet=st.characters(codec="utf-8"), max_size=300) | st.sampled_from([
    "\r\n250 OK\r\nMAIL FROM:<x>", "{client_ip}", "{{", "}", "\x00\x1b[31m", "a" * 5000, "\n.\n", "%s%n"])

TEMPLATE_POLICY = """
rules:
  - name: r
    stage: rcpt
    action: {action}
    reply: "{code} {enh} [{{client_ip}}] {{helo}} {{sender}} {{recipient}} {{txn}} {{dnsbl.zone}} {{{{x}}}}"
  - name: h
    stage: rcpt
    action: add_header
    header: {{name: X-T, value: "{{helo}}|{{sender}}"}}
"""


@settings(max_examples=200, deadline=None)
@given(helo=HOSTILE, sender=HOSTILE, recipient=HOSTILE, zone=HOSTILE, tid=HOSTILE,
       action=st.sampled_from([("reject", 550, "5.7.1"), ("tempfail", 451, "4.7.1"), ("disconnect", 421, "4.7.0")]))
def test_replies_are_valid_and_injection_proof(helo: str, sender: str, recipient: str, zone: str, tid: str,
                                               action: tuple[str, int, str]) -> None:
    name, code, enh = action
    text = TEMPLATE_POLICY.format(action=name, code=code, enh=enh)
    script = reset_script()
    script.fields["dnsbl"] = {"zone": zone}
    r = make_runner(text)
    s = session(helo=helo)
    t = transaction(sender=sender, recipient=recipient, tid=tid)
    v = asyncio.run(r.evaluate(Stage.RCPT, s, t))
    assert v.reply is not None
    rendered = str(v.reply)
    assert "\r" not in rendered and "\n" not in rendered and "\x00" not in rendered
    assert v.reply.code == code and v.reply.enhanced == enh
    again = parse_reply(rendered)  # what the client reads back is the same single reply
    assert (again.code, again.enhanced) == (code, enh)
    assert rendered.startswith(f"{code} {enh} [198.51.100.7] ")
    assert rendered.endswith("{x}") or len(rendered) >= 400
    assert len(rendered) <= 4 + 6 + 400
    for hname, hvalue in v.headers:
        assert hname == "X-T" and not any(c in hvalue for c in "\r\n\x00")


@given(ip=st.ip_addresses())
@settings(max_examples=100, deadline=None)
def test_client_ip_matching_agrees_with_ipaddress(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    nets = ["10.0.0.0/8", "192.0.2.0/24", "2001:db8::/32"]
    r = make_runner("rules:\n  - {name: m, stage: connect, if: {client_ip: [" + ", ".join(f"'{n}'" for n in nets)
                    + "]}, action: reject}\n")
    reset_script()
    v = asyncio.run(r.evaluate(Stage.CONNECT, session(str(ip)), None))
    expected = any(ip in ipaddress.ip_network(n) for n in nets if ipaddress.ip_network(n).version == ip.version)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        expected = expected or any(ip.ipv4_mapped in ipaddress.ip_network(n) for n in nets[:2])
    assert (v.reply is not None) == expected
