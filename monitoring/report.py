"""``recstack report``: the dashboard's panels as static PNG plots from Prometheus' HTTP API,
on one HTML page (for the native stack, where there is no Grafana).

In:  a Prometheus base URL and a time range. Out: ``<out>/index.html`` plus one PNG per panel
(default ``$RECSTACK_HOME/reports/monitoring-<stamp>/``). A panel whose queries return nothing
says so on the page instead of failing the report.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
import re
import time
from pathlib import Path
from typing import Any

import httpx
import matplotlib
import matplotlib.pyplot as plt

from monitoring.panels import PANELS, Panel
from recstack.settings import Settings

logger = logging.getLogger(__name__)


def query_range(client: httpx.Client, expr: str, start: float, end: float, step: float
                ) -> list[dict[str, Any]]:
    """``/api/v1/query_range`` result (a list of ``{metric, values}``); raises on an error."""
    resp = client.get("/api/v1/query_range",
                      params={"query": expr, "start": start, "end": end, "step": step})
    body = resp.json()
    if resp.status_code != 200 or body.get("status") != "success":
        raise ValueError(f"Prometheus refused {expr!r}: {body.get('error', resp.text[:200])}")
    return body["data"]["result"]


def legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)


def plot_panel(panel: Panel, series: list[tuple[str, list[tuple[float, float]]]], out: Path
               ) -> Path:
    matplotlib.use("Agg")

    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    for name, points in series:
        xs = [dt.datetime.fromtimestamp(t, dt.UTC) for t, _ in points]
        ax.plot(xs, [v for _, v in points], label=name or "value", lw=1.4)
    ax.set_title(panel.title, fontsize=10)
    ax.set_ylabel(panel.unit)
    ax.grid(alpha=0.3)
    if len(series) <= 12:
        ax.legend(fontsize=7, loc="best")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def write_report(settings: Settings, prometheus_url: str, seconds: float,
                 out: Path | None = None) -> Path:
    """Query every panel over the last ``seconds`` and write the page; returns its path."""
    end = time.time()
    start = end - seconds
    step = max(5.0, seconds / 300)
    out = out or settings.reports_dir / f"monitoring-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}"
    out.mkdir(parents=True, exist_ok=True)
    client = httpx.Client(base_url=prometheus_url, timeout=10.0)
    try:
        client.get("/-/ready").raise_for_status()
    except httpx.HTTPError as exc:
        raise ConnectionError(f"Prometheus at {prometheus_url} is not reachable: {exc}") from exc
    parts = []
    for i, panel in enumerate(PANELS):
        series = []
        for q in panel.queries:
            for r in query_range(client, q.expr, start, end, step):
                points = [(float(t), float(v)) for t, v in r["values"]]
                series.append((legend(q.legend, r["metric"]), points))
        title = html.escape(panel.title)
        exprs = "<br>".join(f"<code>{html.escape(q.expr)}</code>" for q in panel.queries)
        if series:
            png = plot_panel(panel, series, out / f"panel-{i + 1:02d}.png")
            parts.append(f"<section><h2>{title}</h2><img src='{png.name}' alt='{title}'>"
                         f"<p>{exprs}</p></section>")
        else:
            parts.append(f"<section><h2>{title}</h2><p><em>no data in this range</em></p>"
                         f"<p>{exprs}</p></section>")
    page = out / "index.html"
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>recstack report</title>"
        "<style>body{font-family:sans-serif;max-width:1600px;margin:auto}"
        "section{display:inline-block;width:49%;vertical-align:top}img{max-width:100%}"
        "code{font-size:11px}</style></head><body>"
        f"<h1>recstack monitoring report</h1><p>Prometheus {html.escape(prometheus_url)}, "
        f"{dt.datetime.fromtimestamp(start, dt.UTC):%Y-%m-%d %H:%M} to "
        f"{dt.datetime.fromtimestamp(end, dt.UTC):%H:%M} UTC, step {step:.0f}s.</p>"
        + "".join(parts) + "</body></html>\n")
    return page
