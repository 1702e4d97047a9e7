"""The demo's closing tables, as a newcomer's 80-column, non-TTY terminal shows them."""

from __future__ import annotations

import io
from types import SimpleNamespace

from rich.console import Console

from app.demo import DemoResult, print_demo_result


def test_the_load_figures_are_all_readable_at_80_columns() -> None:
    load = SimpleNamespace(row="/recommendations/[user]", requests=2851, errors=0, shed=3,
                           rps=98.2, p50_ms=6, p95_ms=14, p99_ms=21, total_requests=3099,
                           total_failures=3)
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=False, color_system=None)
    print_demo_result(DemoResult(step_seconds={"load": 30.0}, load=load,
                                 urls={"api": "http://127.0.0.1:18080"}), console)
    text = out.getvalue()
    assert "…" not in text  # nothing truncated
    for figure in ("2,851", "98.2", "6 / 14 / 21", "3,099", "shed (503 + Retry-After)",
                   "errors", "http://127.0.0.1:18080"):
        assert figure in text, figure
    assert max(len(line) for line in text.splitlines()) <= 80
