"""``recstack experiment drift --seeds A,B,...``: the drift experiment once per seed, then one
table over the seeds (each seed's row, their mean and their minimum), as the README shows it.

Seeds 42 and 7 tuned the experiment's thresholds (README.md, "Why the defaults are what they
are"); a table meant to show how the loop generalises uses other seeds.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pandas as pd

from app.experiments.drift.drift import DriftConfig, run_drift
from app.experiments.report import ReportFolder
from recstack.settings import Settings

TUNING_SEEDS = (42, 7)

# (column, summary key): the affected segment first (the headline), then all users.
COLUMNS = (
    ("detection (days)", "drift_detection_delay_sim_days"),
    ("affected live", "live_affected_ctr_recovery_fraction"),
    ("affected frozen", "frozen_affected_ctr_recovery_fraction"),
    ("affected recovery time (days)", "live_affected_ctr_recovery_time_sim_days"),
    ("all users live", "live_ctr_recovery_fraction"),
    ("all users frozen", "frozen_ctr_recovery_fraction"),
    ("all users recovery time (days)", "live_ctr_recovery_time_sim_days"),
    ("unaffected live", "live_unaffected_ctr_recovery_fraction"),
    ("retrains / promoted", None),
    ("alerts before shift", "alerts_before_shift"),
    ("feature-alert checks before shift", "feature_psi_alert_checks_before_shift"),
    ("false alarms, 7-day replay", "false_alarms_7d_no_scenario"),
    ("max PSI, 7-day replay", "false_alarm_max_psi"),
)
TEXT_COLUMNS = ("retrains / promoted", "max PSI, 7-day replay")  # no mean or min


def run_seeds(base: Settings, cfg: DriftConfig, seeds: list[int], console: Any = None
              ) -> dict[str, Any]:
    """``run_drift`` for each seed (sequentially: each run owns both cores), then the table."""
    if not seeds:
        raise ValueError("--seeds needs at least one seed")
    rows = []
    for n, seed in enumerate(seeds, 1):
        if console is not None:
            console.print(f"seed {seed} ({n} of {len(seeds)})")
        summary = run_drift(base, replace(cfg, seed=seed), console)
        rows.append({"seed": seed, **summary})
    return write_table(base, cfg, rows)


def rows_from_reports(paths: list[Path]) -> tuple[DriftConfig, list[dict[str, Any]]]:
    """The per-seed rows of finished drift reports (their ``summary.json`` and settings), so a
    table can be rebuilt with other columns without re-running the seeds."""
    rows, cfg = [], None
    for path in paths:
        doc = json.loads((path / "summary.json").read_text())
        used = doc.get("settings") or {}
        known = {k: v for k, v in used.items() if k in DriftConfig.__dataclass_fields__}
        cfg = cfg or DriftConfig(**known)
        rows.append({"seed": known.get("seed"), **doc, "report": str(path)})
    if cfg is None:
        raise ValueError("no drift reports given")
    return cfg, rows


def seed_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per seed with the table's columns, then ``mean`` and ``min`` rows (a recovery
    time that never came is ``None``: it counts as missing in the mean and as the worst, so
    the minimum row then says "not recovered")."""
    frame = pd.DataFrame([{"seed": r["seed"], **{c: _cell(r, k) for c, k in COLUMNS}}
                          for r in rows])
    numeric = [c for c, _ in COLUMNS if c not in TEXT_COLUMNS]
    stats = []
    for label, fn in (("mean", "mean"), ("min", "min")):
        stat: dict[str, Any] = {"seed": label}
        for c in numeric:
            col = pd.to_numeric(frame[c], errors="coerce")
            stat[c] = round(float(getattr(col, fn)()), 3) if col.notna().any() else None
            if fn == "min" and "time" in c and col.isna().any():
                stat[c] = "not recovered"
        stat.update({c: "" for c in TEXT_COLUMNS})
        stats.append(stat)
    return pd.concat([frame, pd.DataFrame(stats)], ignore_index=True)


def _cell(row: dict[str, Any], key: str | None) -> Any:
    if key is None:
        return f"{row.get('retrains')} / {row.get('promotions')}"
    value = row.get(key)
    if value is None and "recovery_time" in key:
        return "not recovered"
    if isinstance(value, dict):  # max PSI per feature: the largest one
        return round(max(value.values()), 3) if value else None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_table(base: Settings, cfg: DriftConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The report folder ``drift-seeds-*``: ``seeds.csv``, the Markdown table, summary.json."""
    table = seed_table(rows)
    report = ReportFolder.create(base, "drift-seeds",
                                 f"Drift experiment over seeds: {cfg.scenario}")
    report.csv("seeds", table)
    tuned = sorted(set(TUNING_SEEDS) & {r["seed"] for r in rows})
    report.text(
        f"{len(rows)} runs of `recstack experiment drift --scenario {cfg.scenario}`; "
        + (f"seeds {tuned} were used to tune the thresholds. " if tuned else
           "none of them was used to tune the thresholds. ")
        + "Recovery fractions: the final 12 h's fraction of the oracle over the 12 h before "
        "the shift; recovery time: the first time the 6-hour fraction stays at >= "
        f"{cfg.recovery_level:.0%} of its pre-shift level for 6 simulated hours (None: not "
        "recovered in the run; its mean is over the seeds that recovered). Each seed's own report: `report` in summary.json.")
    report.table(table.to_dict("records"), list(table.columns))
    summary = {"seeds": [r["seed"] for r in rows],
               "runs": [{k: r.get(k) for k in ("seed", "report", "wall_seconds",
                                                *(key for _, key in COLUMNS))} for r in rows],
               "mean": table.iloc[-2].to_dict(), "min": table.iloc[-1].to_dict()}
    path = report.finish(summary, settings_used=asdict(cfg))
    return {**summary, "report": str(path)}
