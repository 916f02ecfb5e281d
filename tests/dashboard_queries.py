"""The committed Grafana dashboard's queries, with its template variables filled in as Grafana would."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tests.support import REPO

DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "pipeline.json"
_LABEL_VALUES = re.compile(r"^label_values\((?P<match>.+),\s*(?P<label>\w+)\)$")


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref: str
    expr: str


def load() -> dict[str, Any]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return board


def panels(board: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every panel but the rows."""
    return [p for p in board["panels"] if p.get("type") != "row"]


def fill(expr: str, variables: Mapping[str, str]) -> str:
    """`expr` with `$name` / `${name}` replaced; fails when a variable is left unfilled."""
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    left = re.findall(r"\$\{?\w+", expr)
    assert not left, f"unfilled template variables {left} in {expr}"
    return expr


def panel_queries(board: Mapping[str, Any], variables: Mapping[str, str]) -> list[PanelQuery]:
    return [
        PanelQuery(panel["title"], target["refId"], fill(target["expr"], variables))
        for panel in panels(board)
        for target in panel["targets"]
    ]


def variable_queries(board: Mapping[str, Any], variables: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """Query variables as {name: (label, series selector)}, from their `label_values(selector, label)`."""
    out = {}
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        found = _LABEL_VALUES.match(variable["query"])
        assert found, f"variable {variable['name']}: not a label_values() query: {variable['query']}"
        out[variable["name"]] = (found["label"], fill(found["match"], variables))
    return out
