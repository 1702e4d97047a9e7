"""The committed Grafana dashboard is generated from monitoring/panels.py (same panels as
`recstack report`), and its provisioning points at the datasource uid it uses."""

from __future__ import annotations

import json

import yaml

from monitoring.grafana import DASHBOARD, render
from monitoring.panels import PANELS
from monitoring.report import legend


def test_dashboard_json_is_in_sync_with_panels() -> None:
    assert DASHBOARD.read_text() == render(), "run: python -m monitoring.grafana"
    board = json.loads(DASHBOARD.read_text())
    assert [p["title"] for p in board["panels"]] == [p.title for p in PANELS]
    assert len({p["id"] for p in board["panels"]}) == len(PANELS)


def test_datasource_uid_matches_provisioning() -> None:
    prov = DASHBOARD.parent.parent / "provisioning" / "datasources" / "prometheus.yml"
    uids = {d["uid"] for d in yaml.safe_load(prov.read_text())["datasources"]}
    board = json.loads(DASHBOARD.read_text())
    assert {t["datasource"]["uid"] for p in board["panels"] for t in p["targets"]} <= uids


def test_required_panels_exist() -> None:
    titles = " ".join(p.title.lower() for p in PANELS)
    for word in ("stage", "requests per second", "errors", "degraded", "drift", "ctr",
                 "model versions"):
        assert word in titles, word


def test_legend_template() -> None:
    assert legend("{{model}} v{{ version }}", {"model": "ranker", "version": "3"}) == "ranker v3"
