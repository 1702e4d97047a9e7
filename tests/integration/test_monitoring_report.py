"""`recstack report` against a real Prometheus (free port) that scrapes a drift monitor's
/metrics with recstack's rules loaded: the page has a plot for the panels that have data."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from monitoring.monitor import MonitorMetrics
from monitoring.report import write_report
from recstack.settings import REPO_ROOT, Settings
from tests.conftest import free_port, need_binary, stop_process, wait_for_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_report_plots_panels_from_prometheus(settings: Settings, tmp_path: Path) -> None:
    from prometheus_client import start_http_server

    binary = need_binary("prometheus")
    metrics = MonitorMetrics()
    metrics.psi.labels(feature="user_ctr_7d").set(0.31)
    metrics.ctr.set(0.05)
    metrics.ctr_baseline.set(0.06)
    target = free_port()
    server, thread = start_http_server(target, addr="127.0.0.1", registry=metrics.registry)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(REPO_ROOT / "monitoring" / "rules.yml")],
        "scrape_configs": [{"job_name": "monitor",
                            "static_configs": [{"targets": [f"127.0.0.1:{target}"]}]}],
    }))
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, 30, proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the first scrapes are stored
            r = httpx.get(f"{url}/api/v1/query", params={"query": "recstack_drift_psi"})
            if r.json()["data"]["result"]:
                break
            time.sleep(0.5)
        time.sleep(2)
        page = write_report(settings, url, 120, tmp_path / "report")
    finally:
        stop_process(proc)
        server.shutdown()
        thread.join(timeout=5)
    text = page.read_text()
    assert "Feature drift" in text and "Online CTR" in text
    pngs = sorted(p.name for p in page.parent.glob("panel-*.png"))
    assert len(pngs) >= 2, text
    assert "no data in this range" in text  # serving panels: nothing scraped here
    assert all(f"src='{p}'" in text for p in pngs)


def test_report_fails_clearly_without_prometheus(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(ConnectionError, match="not reachable"):
        write_report(settings, f"http://127.0.0.1:{free_port()}", 60, tmp_path / "r")
