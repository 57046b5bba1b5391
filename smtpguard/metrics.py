"""Every Prometheus object smtpguard exports. Nothing else creates metrics.

Naming: `smtpguard_` prefix, base units, counters end in `_total` (added by the library).
Labels come only from small fixed sets (listener, stage, check, outcome, rule, action, mode,
verb, reply class, kind, result, ...) -- never an IP, an address or a domain. The catalogue in
docs/metrics.md is checked against this module by tests/unit/test_metrics_catalogue.py.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info

registry: CollectorRegistry = REGISTRY

_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZE = (1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)

BUILD_INFO = Info("smtpguard_build", "Version and runtime of this smtpguard process")

# connections and commands
CONNECTIONS_ACTIVE = Gauge("smtpguard_connections_active", "Open client SMTP sessions", ["listener"])
CONNECTIONS = Counter(
    "smtpguard_connections",
    "Client connections by how they ended (ok, refused_global_cap, refused_ip_cap, proxy_refused, timeout, "
    "dropped, shutdown, error, tls_error, policy_disconnect, bad_commands, pipelining)",
    ["listener", "result"],
)
COMMANDS = Counter(
    "smtpguard_commands", "SMTP commands received, by verb and reply class", ["listener", "verb", "reply_class"]
)
PROTOCOL_VIOLATIONS = Counter(
    "smtpguard_protocol_violations",
    "Protocol violations (bare_lf, bare_cr, nul, early_talker, pipelining, line_too_long, bad_syntax, "
    "unknown_command, data_before_354)",
    ["listener", "kind"],
)
TLS_HANDSHAKES = Counter(
    "smtpguard_tls_handshakes", "Inbound TLS handshakes by protocol version and result",
    ["listener", "version", "result"],
)

# messages
MESSAGES = Counter(
    "smtpguard_messages",
    "Transactions by final outcome (delivered, rejected, tempfailed, upstream_rejected, upstream_tempfailed, "
    "upstream_error, aborted, too_big, bad_data)",
    ["listener", "outcome"],
)
MESSAGE_SIZE = Histogram("smtpguard_message_size_bytes", "Size of messages received", ["listener"], buckets=_SIZE)
DATA_BYTES_IN_FLIGHT = Gauge("smtpguard_data_in_flight_bytes", "Message bytes held in memory across sessions")

# policy
POLICY_DECISIONS = Counter(
    "smtpguard_policy_decisions",
    "Rules that matched, by rule, action and mode (mode=shadow counts what would have happened)",
    ["stage", "rule", "action", "mode"],
)
POLICY_EVALUATION_SECONDS = Histogram(
    "smtpguard_policy_evaluation_seconds", "Policy evaluation per stage, checks included", ["stage"], buckets=_LATENCY
)
POLICY_RELOADS = Counter("smtpguard_policy_reloads", "Policy (re)loads by result (ok, error)", ["result"])
POLICY_RULES = Gauge("smtpguard_policy_rules", "Rules in the active policy")
POLICY_INFO = Info("smtpguard_policy", "Version (content hash) of the active policy")
POLICY_LAST_RELOAD = Gauge("smtpguard_policy_last_reload_timestamp_seconds", "When the active policy was loaded")

# checks
CHECK_OUTCOMES = Counter("smtpguard_check_outcomes", "Outcomes emitted by checks", ["check", "outcome"])
CHECK_SECONDS = Histogram("smtpguard_check_duration_seconds", "Check run time", ["check"], buckets=_LATENCY)

# DNS
DNS_QUERIES = Counter(
    "smtpguard_dns_queries", "DNS queries by type and result (ok, nxdomain, nodata, timeout, servfail, error, cached)",
    ["type", "result"],
)
DNS_SECONDS = Histogram("smtpguard_dns_query_duration_seconds", "DNS query latency (cache misses)", ["type"],
                        buckets=_LATENCY)
DNSBL_ZONE_HEALTHY = Gauge("smtpguard_dnsbl_zone_healthy",
                           "1 when the DNS list answered its health probes sanely (zone label: <check>/<zone name>)",
                           ["zone"])

# state store
STORE_OPERATIONS = Counter("smtpguard_store_operations", "State store operations by backend, operation and result",
                           ["backend", "op", "result"])
STORE_SECONDS = Histogram("smtpguard_store_operation_duration_seconds", "State store latency", ["backend", "op"],
                          buckets=_LATENCY)
STORE_CIRCUIT_OPEN = Gauge("smtpguard_store_circuit_open", "1 while the store circuit breaker is open", ["backend"])

# upstream
UPSTREAM_CONNECT_SECONDS = Histogram("smtpguard_upstream_connect_duration_seconds",
                                     "Time to open an upstream session (connect, EHLO, XCLIENT, STARTTLS)",
                                     buckets=_LATENCY)
UPSTREAM_COMMAND_SECONDS = Histogram("smtpguard_upstream_command_duration_seconds", "Upstream command latency",
                                     ["verb"], buckets=_LATENCY)
UPSTREAM_REPLIES = Counter("smtpguard_upstream_replies", "Upstream replies by verb and class", ["verb", "reply_class"])
UPSTREAM_ERRORS = Counter("smtpguard_upstream_errors",
                          "Upstream failures (connect, timeout, disconnected, tls, protocol)", ["kind"])
UPSTREAM_UP = Gauge("smtpguard_upstream_up", "1 when the last upstream contact or probe succeeded")

# lifecycle
LISTENERS_UP = Gauge("smtpguard_listeners_up", "Listeners accepting connections", ["listener"])
SHUTTING_DOWN = Gauge("smtpguard_shutting_down", "1 while draining after SIGTERM")
LOG_LINES_DROPPED = Counter("smtpguard_log_lines_dropped",
                            "Log lines dropped because the log output (stderr) was not being read")


# documented label values, exported as 0 from the start so that rate()/increase() see the
# first event of a process (a series that appears at 1 has no increase)
CONNECTION_RESULTS = ("ok", "refused_global_cap", "refused_ip_cap", "proxy_refused", "timeout", "dropped",
                      "shutdown", "error", "tls_error", "policy_disconnect", "bad_commands", "pipelining")
MESSAGE_OUTCOMES = ("delivered", "rejected", "tempfailed", "upstream_rejected", "upstream_tempfailed",
                    "upstream_error", "aborted", "too_big", "bad_data")
VIOLATION_KINDS = ("bare_lf", "bare_cr", "nul", "early_talker", "pipelining", "line_too_long", "bad_syntax",
                   "unknown_command", "data_before_354")
UPSTREAM_ERROR_KINDS = ("connect", "timeout", "disconnected", "tls", "protocol")


def initialise(listeners: list[str]) -> None:
    """Create every documented labelled series at 0 (call once at start-up)."""
    for listener in listeners:
        CONNECTIONS_ACTIVE.labels(listener)
        for result in CONNECTION_RESULTS:
            CONNECTIONS.labels(listener, result)
        for outcome in MESSAGE_OUTCOMES:
            MESSAGES.labels(listener, outcome)
        for kind in VIOLATION_KINDS:
            PROTOCOL_VIOLATIONS.labels(listener, kind)
        MESSAGE_SIZE.labels(listener)
    for kind in UPSTREAM_ERROR_KINDS:
        UPSTREAM_ERRORS.labels(kind)
    for result in ("ok", "error"):
        POLICY_RELOADS.labels(result)


_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, cached: the library's lookup costs a few microseconds and the
    hot path uses a dozen labelled series per message. Series are never removed, so the cache
    only grows with the (small, fixed) label sets."""
    key = (id(metric), labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found


def reply_class(code: int) -> str:
    return f"{code // 100}xx"


def catalogue() -> list[tuple[str, str, tuple[str, ...], str]]:
    """(exposed name, type, label names, help) of every smtpguard metric, sorted by name."""
    rows = []
    for obj in list(globals().values()):
        if isinstance(obj, Counter | Gauge | Histogram | Info):
            kind = type(obj).__name__.lower()
            name = obj._name
            exposed = {"counter": f"{name}_total", "info": f"{name}_info"}.get(kind, name)
            rows.append((exposed, kind, tuple(obj._labelnames), obj._documentation))
    return sorted(rows)


def render_markdown() -> str:
    lines = [
        "# Metrics catalogue",
        "",
        "Generated from `smtpguard/metrics.py` by `python -m smtpguard.metrics > docs/metrics.md`;",
        "`tests/unit/test_metrics_catalogue.py` fails when the two disagree. Every metric is",
        "exported on the metrics listener (`--metrics`, default 127.0.0.1:9108) at `/metrics`.",
        "Labels come only from small fixed sets; never an IP address, a mail address or a domain.",
        "",
        "| metric | type | labels | meaning |",
        "|---|---|---|---|",
    ]
    for name, kind, labels, doc in catalogue():
        lines.append(f"| `{name}` | {kind} | {', '.join(labels) or '—'} | {doc} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
