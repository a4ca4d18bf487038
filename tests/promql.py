"""Metric names used by the Grafana dashboard and the Prometheus rules in ``contrib/``, read
structurally, and ``promtool`` checks when the Debian package ``prometheus`` provides it.

Shared by ``tests.unit.test_metrics_doc`` (names against the catalog of a built node) and
``tests.integration.test_observability_processes`` (names against a real node's scrape).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "contrib" / "grafana" / "tunmesh.json"
RULES = REPO / "contrib" / "prometheus" / "tunmesh-alerts.yaml"
RULES_TEST = REPO / "contrib" / "prometheus" / "tunmesh-alerts.test.yaml"

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
# Label names never start with these prefixes, so after strings are removed every match is a metric.
_NAME = re.compile(r"\b((?:tunmesh|process|python)_[a-zA-Z0-9_]*)\b")
#: Grafana's variables, replaced by values PromQL accepts (for promtool).
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$instance": ".*"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (string literals, so label values, are left out)."""
    return set(_NAME.findall(_STRING.sub('""', expr)))


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_exprs(path: Path = DASHBOARD) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and the templating queries."""
    dash = json.loads(path.read_text())
    exprs = [t["expr"] for p in _panels(dash["panels"]) for t in p.get("targets", []) if t.get("expr")]
    for var in dash.get("templating", {}).get("list", []):
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if var.get("type") == "query" and isinstance(query, str):
            exprs.append(query)
    return exprs


def rule_exprs(path: Path = RULES) -> list[str]:
    """Every rule expression, and the annotations (they name metrics for the reader too)."""
    doc = yaml.safe_load(path.read_text())
    out = []
    for group in doc["groups"]:
        for rule in group["rules"]:
            out.append(rule["expr"])
            out.extend(str(v) for v in rule.get("annotations", {}).values())
    return out


def used_names() -> dict[str, set[str]]:
    """``{"dashboard": names, "rules": names}``."""
    return {
        "dashboard": set().union(*(metric_names(e) for e in dashboard_exprs())),
        "rules": set().union(*(metric_names(e) for e in rule_exprs())),
    }


def promtool() -> str | None:
    return shutil.which("promtool")


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = promtool()
    if tool is None:
        raise RuntimeError("promtool is not installed (Debian package prometheus)")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120, check=False)


def check_dashboard_with_promtool() -> subprocess.CompletedProcess[str]:
    """Parse each dashboard query with promtool: written as recording rules of a throwaway file
    (``label_values(...)`` is Grafana's, so its metric is queried instead)."""
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        for var, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(var, value)
        m = re.fullmatch(r"label_values\((\w+),\s*\w+\)", expr.strip())
        rules.append({"record": f"dashboard:query{i}", "expr": m.group(1) if m else expr})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dashboard-rules.yaml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
        return run_promtool("check", "rules", str(path))
