"""One-off builder for grafana/smtpguard.json (the JSON is the maintained artefact)."""
import json

DS = {"type": "prometheus", "uid": "${datasource}"}
I = 'instance=~"$instance"'
IL = 'instance=~"$instance", listener=~"$listener"'
RI = "$__rate_interval"

panels = []
state = {"x": 0, "y": 0, "rowh": 0, "id": 0}


def nid():
    state["id"] += 1
    return state["id"]


def row(title):
    if state["x"]:
        state["y"] += state["rowh"]; state["x"] = 0; state["rowh"] = 0
    panels.append({"id": nid(), "type": "row", "title": title, "collapsed": False, "panels": [],
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": state["y"]}})
    state["y"] += 1


def place(w, h):
    if state["x"] + w > 24:
        state["y"] += state["rowh"]; state["x"] = 0; state["rowh"] = 0
    pos = {"h": h, "w": w, "x": state["x"], "y": state["y"]}
    state["x"] += w; state["rowh"] = max(state["rowh"], h)
    return pos


def targets(qs):
    out = []
    for i, q in enumerate(qs):
        expr, legend = (q if isinstance(q, tuple) else (q, ""))
        t = {"refId": chr(65 + i), "datasource": DS, "expr": expr, "range": True}
        if legend:
            t["legendFormat"] = legend
        out.append(t)
    return out


def ts(title, qs, unit="short", w=12, h=8, desc="", stack=False, max_=None, min_=None):
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if not stack else 40, "showPoints": "never",
              "spanNulls": False, "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
    defaults = {"unit": unit, "custom": custom}
    if max_ is not None: defaults["max"] = max_
    if min_ is not None: defaults["min"] = min_
    panels.append({"id": nid(), "type": "timeseries", "title": title, "description": desc, "datasource": DS,
                   "gridPos": place(w, h), "targets": targets(qs),
                   "fieldConfig": {"defaults": defaults, "overrides": []},
                   "options": {"legend": {"displayMode": "table", "placement": "right", "showLegend": True,
                                          "calcs": ["mean", "max"]},
                               "tooltip": {"mode": "multi", "sort": "desc"}}})


def stat(title, q, unit="short", w=4, h=4, desc="", steps=None, decimals=None):
    steps = steps or [{"color": "green", "value": None}]
    defaults = {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}}
    if decimals is not None: defaults["decimals"] = decimals
    panels.append({"id": nid(), "type": "stat", "title": title, "description": desc, "datasource": DS,
                   "gridPos": place(w, h), "targets": targets([q]),
                   "fieldConfig": {"defaults": defaults, "overrides": []},
                   "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                               "colorMode": "value", "graphMode": "area", "justifyMode": "auto",
                               "orientation": "auto", "textMode": "auto"}})


def table(title, q, w=12, h=8, desc=""):
    t = targets([q]); t[0]["instant"] = True; t[0]["range"] = False; t[0]["format"] = "table"
    panels.append({"id": nid(), "type": "table", "title": title, "description": desc, "datasource": DS,
                   "gridPos": place(w, h), "targets": t,
                   "fieldConfig": {"defaults": {"unit": "short"}, "overrides": []},
                   "options": {"showHeader": True, "cellHeight": "sm",
                               "footer": {"show": False, "reducer": ["sum"], "fields": ""}},
                   "transformations": [{"id": "organize", "options": {"excludeByName": {"Time": True}}}]})


def pct(metric, by, sel, qs=(0.5, 0.95, 0.99)):
    by_ = ", ".join(["le", *by])
    leg = " ".join("{{%s}}" % b for b in by)
    return [(f"histogram_quantile({q}, sum by ({by_}) (rate({metric}_bucket{{{sel}}}[{RI}])))",
             f"p{int(q * 100)} {leg}".strip()) for q in qs]


REJECT = 'outcome=~"rejected|upstream_rejected|too_big|bad_data"'
TEMPFAIL = 'outcome=~"tempfailed|upstream_tempfailed|upstream_error"'
msgs = f"smtpguard_messages_total{{{IL}}}"

row("Overview")
stat("Messages / s", f"sum(rate({msgs}[{RI}]))", "ops", decimals=2)
stat("Rejected", f'(sum(rate(smtpguard_messages_total{{{IL}, {REJECT}}}[{RI}])) or vector(0)) / sum(rate({msgs}[{RI}]))',
     "percentunit", desc="Share of transactions refused with 5xx (by smtpguard or upstream)",
     steps=[{"color": "green", "value": None}, {"color": "orange", "value": 0.5}, {"color": "red", "value": 0.8}])
stat("Tempfailed", f'(sum(rate(smtpguard_messages_total{{{IL}, {TEMPFAIL}}}[{RI}])) or vector(0)) / sum(rate({msgs}[{RI}]))',
     "percentunit", steps=[{"color": "green", "value": None}, {"color": "orange", "value": 0.2}, {"color": "red", "value": 0.5}])
stat("Open sessions", f"sum(smtpguard_connections_active{{{IL}}})")
stat("Upstream up", f"min(smtpguard_upstream_up{{{I}}})", "bool_yes_no",
     desc="Worst instance: 0 when the last upstream contact or probe failed",
     steps=[{"color": "red", "value": None}, {"color": "green", "value": 1}])
stat("Rules loaded", f"max(smtpguard_policy_rules{{{I}}})")
ts("Traffic: transactions by outcome", [(f"sum by (outcome) (rate({msgs}[{RI}]))", "{{outcome}}")], "ops", stack=True)
ts("Accept / reject / tempfail rate", [
    (f'sum(rate(smtpguard_messages_total{{{IL}, outcome="delivered"}}[{RI}])) or vector(0)', "accepted (delivered)"),
    (f"sum(rate(smtpguard_messages_total{{{IL}, {REJECT}}}[{RI}])) or vector(0)", "rejected (5xx)"),
    (f"sum(rate(smtpguard_messages_total{{{IL}, {TEMPFAIL}}}[{RI}])) or vector(0)", "tempfailed (4xx)"),
], "ops")
ts("Connections by result", [(f"sum by (result) (rate(smtpguard_connections_total{{{IL}}}[{RI}]))", "{{result}}")],
   "cps", stack=True)
ts("SMTP replies by verb and class", [(f"sum by (verb, reply_class) (rate(smtpguard_commands_total{{{IL}}}[{RI}]))",
                                       "{{verb}} {{reply_class}}")], "ops")
table("Top rules (enforced, selected range)",
      f'topk(10, sum by (rule, action, stage) (increase(smtpguard_policy_decisions_total{{{I}, mode="enforce"}}[$__range])))',
      w=24, desc="Rules that decided most often in the selected time range")

row("Policy")
ts("Rule hits (enforce)", [(f'sum by (rule, action) (rate(smtpguard_policy_decisions_total{{{I}, mode="enforce"}}[{RI}]))',
                            "{{rule}} -> {{action}}")], "ops")
ts("Shadow rule hits (would have)", [(f'sum by (rule, action) (rate(smtpguard_policy_decisions_total{{{I}, mode="shadow"}}[{RI}]))',
                                      "{{rule}} -> {{action}} (shadow)")], "ops",
   desc="What shadow-mode rules would have done. Compare with enforced traffic before switching a rule to enforce.")
ts("Policy evaluation latency by stage", pct("smtpguard_policy_evaluation_seconds", ["stage"], I), "s")
ts("Policy reloads", [(f"sum by (result) (increase(smtpguard_policy_reloads_total{{{I}}}[{RI}]))", "{{result}}")], "short")
stat("Seconds since last reload", f"time() - max(smtpguard_policy_last_reload_timestamp_seconds{{{I}}})", "s", w=6)
stat("Reload errors (range)", f'sum(increase(smtpguard_policy_reloads_total{{{I}, result="error"}}[$__range])) or vector(0)', w=6,
     steps=[{"color": "green", "value": None}, {"color": "red", "value": 1}])
table("Active policy version per instance", f"smtpguard_policy_info{{{I}}}", w=12, h=4)

row("Checks")
ts("Check outcomes", [(f"sum by (check, outcome) (rate(smtpguard_check_outcomes_total{{{I}}}[{RI}]))",
                       "{{check}}.{{outcome}}")], "ops")
ts("Check latency (p50 / p95 / p99)", pct("smtpguard_check_duration_seconds", ["check"], I), "s")
ts("DNS queries by result", [(f"sum by (type, result) (rate(smtpguard_dns_queries_total{{{I}}}[{RI}]))",
                              "{{type}} {{result}}")], "reqps")
ts("DNS latency (p50 / p95 / p99)", pct("smtpguard_dns_query_duration_seconds", ["type"], I), "s")
ts("DNS failure ratio", [(f'sum(rate(smtpguard_dns_queries_total{{{I}, result=~"timeout|servfail|error"}}[{RI}])) '
                          f'/ sum(rate(smtpguard_dns_queries_total{{{I}, result!="cached"}}[{RI}]))', "failed / sent")],
   "percentunit", w=8, min_=0)
ts("DNSBL zone health", [(f"min by (zone) (smtpguard_dnsbl_zone_healthy{{{I}}})", "{{zone}}")], "bool", w=8,
   min_=0, max_=1, desc="0 when a DNS list stopped answering its test points sanely (e.g. refuses the resolver)")
ts("Store circuit breaker open", [(f"max by (backend) (smtpguard_store_circuit_open{{{I}}})", "{{backend}}")],
   "bool", w=8, min_=0, max_=1)
ts("Store operations by result", [(f"sum by (backend, op, result) (rate(smtpguard_store_operations_total{{{I}}}[{RI}]))",
                                   "{{backend}} {{op}} {{result}}")], "ops")
ts("Store latency (p50 / p95 / p99)", pct("smtpguard_store_operation_duration_seconds", ["backend", "op"], I), "s")

row("Upstream")
ts("Upstream up", [(f"min by (instance) (smtpguard_upstream_up{{{I}}})", "{{instance}}")], "bool", w=8, min_=0, max_=1)
ts("Upstream connect latency", pct("smtpguard_upstream_connect_duration_seconds", [], I), "s", w=8,
   desc="connect + EHLO + XCLIENT + STARTTLS")
ts("Upstream errors by kind", [(f"sum by (kind) (rate(smtpguard_upstream_errors_total{{{I}}}[{RI}]))", "{{kind}}")],
   "ops", w=8)
ts("Upstream command latency p95 by verb", pct("smtpguard_upstream_command_duration_seconds", ["verb"], I, qs=(0.95,)), "s")
ts("Upstream replies by verb and class", [(f"sum by (verb, reply_class) (rate(smtpguard_upstream_replies_total{{{I}}}[{RI}]))",
                                           "{{verb}} {{reply_class}}")], "ops")

row("Protocol abuse")
ts("Protocol violations by kind", [(f"sum by (kind) (rate(smtpguard_protocol_violations_total{{{IL}}}[{RI}]))",
                                    "{{kind}}")], "ops", stack=True,
   desc="bare LF/CR, NUL, early talkers, unauthorised pipelining, overlong lines, bad syntax, data before 354")
ts("Refused and dropped connections", [(f'sum by (result) (rate(smtpguard_connections_total{{{IL}, result!="ok"}}[{RI}]))',
                                        "{{result}}")], "cps", stack=True)
ts("Inbound TLS handshakes", [(f"sum by (version, result) (rate(smtpguard_tls_handshakes_total{{{IL}}}[{RI}]))",
                               "{{version}} {{result}}")], "ops")
ts("Violations by listener", [(f"sum by (listener) (rate(smtpguard_protocol_violations_total{{{IL}}}[{RI}]))",
                               "{{listener}}")], "ops")

row("Capacity")
ts("Open sessions by listener", [(f"sum by (listener) (smtpguard_connections_active{{{IL}}})", "{{listener}}")], "short", w=8)
ts("DATA bytes in flight", [(f"sum by (instance) (smtpguard_data_in_flight_bytes{{{I}}})", "{{instance}}")], "bytes", w=8)
ts("Process memory (RSS)", [(f"sum by (instance) (process_resident_memory_bytes{{{I}}})", "{{instance}}")], "bytes", w=8)
ts("Process CPU", [(f"sum by (instance) (rate(process_cpu_seconds_total{{{I}}}[{RI}]))", "{{instance}}")], "percentunit", w=8)
ts("Message size (p50 / p95 / p99)", pct("smtpguard_message_size_bytes", [], IL), "bytes", w=8)
ts("Listeners up / draining", [
    (f"sum by (instance) (smtpguard_listeners_up{{{IL}}})", "listeners up {{instance}}"),
    (f"max by (instance) (smtpguard_shutting_down{{{I}}})", "draining {{instance}}"),
], "short", w=8)

var_ds = {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
          "hide": 0, "refresh": 1, "regex": "", "options": []}


def qvar(name, label, q):
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "query": {"query": q, "refId": "PrometheusVariableQueryEditor-VariableQuery", "qryType": 1},
            "definition": q, "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
            "hide": 0, "options": [], "regex": "", "sort": 1}


dash = {
    "title": "smtpguard", "uid": "smtpguard-overview",
    "description": "smtpguard SMTP policy proxy: traffic, policy, checks, upstream, protocol abuse, capacity",
    "tags": ["smtpguard", "smtp", "mail"], "timezone": "browser", "editable": True,
    "graphTooltip": 1, "schemaVersion": 39, "version": 1, "refresh": "30s",
    "time": {"from": "now-6h", "to": "now"},
    "timepicker": {"refresh_intervals": ["10s", "30s", "1m", "5m", "15m"]},
    "fiscalYearStartMonth": 0, "liveNow": False, "weekStart": "",
    "annotations": {"list": [
        {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
         "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"},
        {"datasource": DS, "enable": True, "hide": False, "iconColor": "purple", "name": "Policy reloads",
         "expr": f"changes(smtpguard_policy_last_reload_timestamp_seconds{{{I}}}[1m]) > 0",
         "step": "60s", "titleFormat": "policy reloaded", "textFormat": "{{instance}}"},
    ]},
    "links": [],
    "templating": {"list": [
        var_ds,
        qvar("instance", "Instance", "label_values(smtpguard_build_info, instance)"),
        qvar("listener", "Listener", 'label_values(smtpguard_connections_active{instance=~"$instance"}, listener)'),
    ]},
    "panels": panels,
}
with open("grafana/smtpguard.json", "w") as f:
    json.dump(dash, f, indent=2)
    f.write("\n")
print(len(panels), "panels")
