"""Grafana dashboard JSON from :data:`monitoring.panels.PANELS`
(``python -m monitoring.grafana`` rewrites ``monitoring/grafana/dashboards/recstack-monitoring.json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from monitoring.panels import PANELS

DASHBOARD = Path(__file__).resolve().parent / "grafana" / "dashboards" / "recstack-monitoring.json"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}  # the provisioned datasource's uid


def dashboard() -> dict[str, Any]:
    panels = []
    for i, p in enumerate(PANELS):
        panels.append({
            "id": i + 1, "title": p.title, "type": "timeseries", "description": p.description,
            "datasource": DATASOURCE,
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
            "targets": [{"refId": chr(ord("A") + j), "datasource": DATASOURCE, "expr": q.expr,
                         "legendFormat": q.legend} for j, q in enumerate(p.queries)],
        })
    return {
        "uid": "recstack-monitoring", "title": "recstack monitoring: SLOs, drift, freshness",
        "description": "Same panels as `recstack report` (monitoring/panels.py).",
        "tags": ["recstack"], "timezone": "browser", "schemaVersion": 39, "version": 1,
        "editable": False, "refresh": "10s", "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": []}, "annotations": {"list": []}, "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    DASHBOARD.write_text(render())
    print(DASHBOARD)
