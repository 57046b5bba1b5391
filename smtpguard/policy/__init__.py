"""The policy engine: rule files -> one verdict per stage (see verdict.py for the contract).

Modules, from the outside in:
- `runner`: `PolicyRunner`, the proxy's `PolicyGate` (versions, pinning, hot reload, metrics);
- `evaluation`: one stage's loop between the engine and lazy, cached check runs;
- `engine`: pure evaluation of (policy, facts, results) -> `NeedChecks` or `Decision`;
- `conditions`: the condition tree and matchers (three-valued); `templates`: reply/header
  templates; `defaults`: the one table of default replies;
- `loader` (files, checks, lint), `rulesyntax` (rules, thresholds), `syntax` (conditions),
  `yamlsource` (YAML with line numbers), `model` (the frozen values), `builtin` (named policies);
- tools: `cli` (check/explain/test), `lint`, `explain`, `fixtures`, `scenario`, `offline`.
"""
